"""Dynamic batching under the real server: many concurrent single-text predicts against `textclf serve` (Granian,
2 worker processes, a pool of threads each) all get their own answer, the same as asked one at a time, and every
request went through a batch exactly once (the Prometheus histograms count them)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import start_serve, upload_tiny, wait_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TEXTS = ["the striker scored a late goal", "stir the sauce over low heat", "the keeper saved a shot",
         "bake the bread slowly", "fans cheered the team", "chop the onions finely"]
CLIENTS, EACH = 48, 5


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_concurrent_predicts_are_batched_and_each_gets_its_own_answer(tmp_path, processes):
    base, _, _ = start_serve(tmp_path, processes)
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": upload_tiny(base), "epochs": 4},
                        timeout=30).json()
    model_id = wait_job(base, job["id"])["model_id"]
    url = f"{base}/v1/models/{model_id}/predict"
    alone = {t: requests.post(url, json={"texts": [t], "top_k": 2}, timeout=30).json()["predictions"][0]
             for t in TEXTS}
    before = requests.get(f"{base}/metrics", timeout=30).text

    def client(i: int) -> list[tuple[str, dict]]:
        with requests.Session() as session:
            out = []
            for j in range(EACH):
                text = TEXTS[(i + j) % len(TEXTS)]
                resp = session.post(url, json={"texts": [text], "top_k": 2}, timeout=60)
                assert resp.status_code == 200, resp.text
                out.append((text, resp.json()["predictions"][0]))
            return out

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [a for result in pool.map(client, range(CLIENTS)) for a in result]
    assert len(answers) == CLIENTS * EACH
    for text, prediction in answers:
        assert prediction["label"] == alone[text]["label"]
        assert [s["label"] for s in prediction["top_k"]] == [s["label"] for s in alone[text]["top_k"]]
        assert prediction["score"] == pytest.approx(alone[text]["score"], abs=1e-5)

    after = requests.get(f"{base}/metrics", timeout=30).text

    def grew(name: str) -> float:
        return metric(after, name) - metric(before, name)

    merged, calls = grew("textclf_predict_batch_requests_sum"), grew("textclf_predict_batch_requests_count")
    texts = grew("textclf_predict_batch_texts_sum")
    assert merged == texts == CLIENTS * EACH  # every request in exactly one batch, one text each
    assert 1 <= calls <= CLIENTS * EACH
    assert metric(after, "textclf_predict_queue_depth") == 0
