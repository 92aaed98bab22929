"""Text in any script, end to end through the API: an upload reports its script mix, a job on Japanese or Thai
data gets the character tokenizer without being told, trains (in-process, by the worker's own code), predicts,
and its bundle classifies with onnxruntime and HF tokenizers alone. English keeps the word tokenizer; a kind the
user chose is kept; a dataset uploaded before the mix was recorded is resolved from its records."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from core.db.tables import Dataset
from tests.helpers import Api, assert_bundle_agrees_with_api, db_settings, running_api, sqlite_settings
from tests.helpers import chinese_dataset_csv as zh_csv
from tests.helpers import japanese_dataset_csv as ja_csv
from tests.helpers import thai_dataset_csv as th_csv
from tests.helpers import tiny_dataset_csv as en_csv

pytestmark = pytest.mark.integration

LANGUAGES = {
    "ja": {"csv": ja_csv, "labels": ["food", "weather"],
           # unseen sentences, each with words of its label's training sentences
           "texts": {"明日は一日中雨が降るでしょう。": "weather", "このラーメンはとてもおいしいです。": "food",
                     "今朝は雪が降って寒いです。": "weather", "お寿司とうどんを食べました。": "food"}},
    "th": {"csv": th_csv, "labels": ["food", "sport"],
           "texts": {"นักฟุตบอลยิงประตูในนาทีสุดท้าย": "sport", "ต้มยำกุ้งร้านนี้อร่อยมาก": "food",
                     "ทีมชาติไทยชนะการแข่งขันวอลเลย์บอล": "sport", "ข้าวเหนียวมะม่วงหวานอร่อย": "food"}},
}
EPOCHS = 4


def upload(api: Api, data: bytes, filename: str) -> dict:
    resp = api.upload(data, filename)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()


def tokenizer_kind(api: Api, dataset_id: str, **spec: Any) -> str:
    """The kind the job created on this dataset stores (and shows in the create reply, and in GET)."""
    resp = api.post("/v1/jobs", json={"dataset_id": dataset_id, **spec})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job = resp.get_json()
    assert api.get(f"/v1/jobs/{job['id']}").get_json()["spec"]["tokenizer"] == job["spec"]["tokenizer"]
    return job["spec"]["tokenizer"]["kind"]


# ---------------------------------------------------------------------------------------------------------
# Japanese and Thai: upload, train, predict, bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, dict[str, dict]]]:
    """An API with a model per language (trained on its dataset, the tokenizer left to `auto`)."""
    from worker.training import run_training

    settings = sqlite_settings(tmp_path_factory.mktemp("any-script"))
    with running_api(settings) as (api, sessionmaker):
        found = {}
        for lang, case in LANGUAGES.items():
            dataset = upload(api, case["csv"](), f"{lang}.csv")
            job = api.create_job(dataset["id"], name=f"any-script-{lang}", epochs=EPOCHS)
            assert run_training(sessionmaker=sessionmaker, settings=settings, job_id=uuid.UUID(job["id"])) == \
                "succeeded", api.get(f"/v1/jobs/{job['id']}").get_json()
            job = api.get(f"/v1/jobs/{job['id']}").get_json()
            found[lang] = {"dataset": dataset, "job": job, "model": api.get(f"/v1/models/{job['model_id']}").get_json()}
        yield api, found


def test_uploads_report_their_scripts(trained):
    _, found = trained
    ja = found["ja"]["dataset"]
    assert set(ja["scripts"]) == {"Hiragana", "Han", "Katakana"}
    assert sum(ja["scripts"].values()) == pytest.approx(1.0, abs=2e-3)
    assert list(ja["scripts"].values()) == sorted(ja["scripts"].values(), reverse=True)
    assert found["th"]["dataset"]["scripts"] == {"Thai": 1.0}
    assert (found["ja"]["dataset"]["row_count"], found["th"]["dataset"]["row_count"]) == (72, 72)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_job_with_only_a_dataset_id_gets_the_character_tokenizer(trained, lang):
    api, found = trained
    dataset_id = found[lang]["dataset"]["id"]
    assert tokenizer_kind(api, dataset_id) == "char"
    # the trained job's spec says it too, and so do its model and the model's card
    assert found[lang]["job"]["spec"]["tokenizer"]["kind"] == "char"
    assert found[lang]["model"]["spec"]["tokenizer"]["kind"] == "char"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_model_predicts_text_in_its_script(trained, lang):
    api, found = trained
    model, case = found[lang]["model"], LANGUAGES[lang]
    assert model["labels"] == case["labels"]
    assert model["metrics"]["onnx_parity"]["argmax_agreement"] == 1.0
    texts = list(case["texts"])
    resp = api.post(f"/v1/models/{model['id']}/predict", json={"texts": texts, "top_k": 2})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    predictions = resp.get_json()["predictions"]
    assert [p["label"] for p in predictions] == list(case["texts"].values())
    for p in predictions:
        assert [s["label"] for s in p["top_k"]] and abs(sum(s["score"] for s in p["top_k"]) - 1.0) < 1e-4


def test_each_model_answers_text_in_any_script(trained):
    """Text in another script (all unknown characters), mixed or empty: a label, never an error."""
    api, found = trained
    texts = ["明日は雨です。", "ต้มยำกุ้ง", "The team won.", "苹果发布了新款iPhone12", "ＡＢＣ１２３", "😀", ""]
    for lang in LANGUAGES:
        model = found[lang]["model"]
        resp = api.post(f"/v1/models/{model['id']}/predict", json={"texts": texts})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert all(p["label"] in model["labels"] for p in resp.get_json()["predictions"])


def bundle_bytes(api: Api, model: dict) -> bytes:
    resp = api.client.get(f"/v1/models/{model['id']}/bundle")  # binary: not through Api's text checks
    try:
        assert resp.status_code == 200 and resp.mimetype == "application/zip"
        return resp.get_data()
    finally:
        resp.close()


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_bundle_classifies_with_onnxruntime_and_tokenizers_alone(trained, lang, tmp_path: Path):
    """The README's bundle example, run outside the checkout on this language's texts, gives the API's labels and
    scores: the character splitting travels inside tokenizer.json."""
    api, found = trained
    model, case = found[lang]["model"], LANGUAGES[lang]
    data = bundle_bytes(api, model)
    bundle = zipfile.ZipFile(io.BytesIO(data))
    card = json.loads(bundle.read("model_card.json"))
    assert card["spec"]["tokenizer"]["kind"] == "char" and card["labels"] == case["labels"]
    assert "Split" in json.loads(bundle.read("tokenizer.json"))["pre_tokenizer"]["pretokenizers"][0]["type"]
    assert_bundle_agrees_with_api(api, model, data, [*case["texts"], "明日は雨です。 ต้มยำกุ้ง ＡＢＣ１２３"], tmp_path)


# ---------------------------------------------------------------------------------------------------------
# what `auto` becomes, on both databases (no training)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Api, Any]]:
    with running_api(db_settings(request, tmp_path)) as (api, sessionmaker):
        yield api, sessionmaker


def test_english_gets_the_word_tokenizer(db_api):
    api, _ = db_api
    dataset = upload(api, en_csv(), "en.csv")
    assert dataset["scripts"] == {"Latin": 1.0}
    assert tokenizer_kind(api, dataset["id"]) == "word"
    assert tokenizer_kind(api, dataset["id"], tokenizer={"kind": "auto"}) == "word"


def test_chinese_with_brand_names_gets_the_character_tokenizer(db_api):
    api, _ = db_api
    dataset = upload(api, zh_csv(), "zh.csv")
    assert list(dataset["scripts"]) == ["Han", "Latin"] and dataset["scripts"]["Han"] > 0.9
    assert dataset["labels"] == {"体育": 36, "美食": 36}
    assert tokenizer_kind(api, dataset["id"]) == "char"
    # only the kind is resolved: the other tokenizer settings stay as given
    resp = api.post("/v1/jobs", json={"dataset_id": dataset["id"],
                                      "tokenizer": {"kind": "auto", "vocab_size": 500, "max_length": 64}})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    assert resp.get_json()["spec"]["tokenizer"] == {"kind": "char", "lowercase": True, "vocab_size": 500,
                                                    "min_frequency": 1, "max_length": 64}
    # and the character defaults fill the model fields the request left out, shown in the job's spec
    model = resp.get_json()["spec"]["model"]
    assert model["filter_sizes"] == [1, 2, 3] and model["tfidf"]["weight"] == 0.7
    resp = api.post("/v1/jobs", json={"dataset_id": dataset["id"], "model": {"tfidf": {"weight": 0.4}}})
    model = resp.get_json()["spec"]["model"]
    assert model["filter_sizes"] == [1, 2, 3] and model["tfidf"]["weight"] == 0.4


@pytest.mark.parametrize("kind", ["word", "bpe", "wordpiece"])
def test_an_explicit_kind_on_chinese_is_kept(db_api, kind):
    api, _ = db_api
    dataset_id = upload(api, zh_csv(), "zh.csv")["id"]
    assert tokenizer_kind(api, dataset_id, tokenizer={"kind": kind}) == kind
    resp = api.post("/v1/jobs", json={"dataset_id": dataset_id, "tokenizer": {"kind": kind}})
    assert resp.get_json()["spec"]["model"]["filter_sizes"] == [3, 4, 5]  # the character defaults are char's only


def test_a_sweeps_children_get_the_resolved_kind(db_api):
    api, _ = db_api
    dataset_id = upload(api, th_csv(), "th.csv")["id"]
    resp = api.post("/v1/sweeps", json={"dataset_id": dataset_id, "base": {"epochs": 1},
                                        "grid": {"optimizer.name": ["sgd", "adam"]}})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    children = resp.get_json()["children"]
    assert len(children) == 2
    for child in children:
        assert api.get(f"/v1/jobs/{child['job_id']}").get_json()["spec"]["tokenizer"]["kind"] == "char"


@pytest.mark.parametrize("csv, kind", [(ja_csv, "char"), (th_csv, "char"),
                                       (en_csv, "word")], ids=["ja", "th", "en"])
def test_a_dataset_without_recorded_scripts_resolves_from_its_records(db_api, csv, kind):
    """Datasets uploaded before the scripts column existed have NULL there (SQL NULL, as the migration left them)."""
    api, sessionmaker = db_api
    dataset_id = upload(api, csv(), "old.csv")["id"]
    with sessionmaker.begin() as session:
        session.execute(sa.update(Dataset).where(Dataset.id == uuid.UUID(dataset_id)).values(scripts=sa.null()))
    with sessionmaker() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Dataset).where(
            Dataset.id == uuid.UUID(dataset_id), Dataset.scripts.is_(None))) == 1
    assert api.get(f"/v1/datasets/{dataset_id}").get_json()["scripts"] is None
    assert tokenizer_kind(api, dataset_id) == kind
    assert tokenizer_kind(api, dataset_id) == kind  # the second time from the cached mix
