"""Shared test helpers (no fixtures: those live in the conftest.py files): settings, datasets, the API through
Flask's test client, and the service as child processes polled over HTTP."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from core.config import Settings
from core.db import api_keys
from core.db.migrate import upgrade
from core.db.session import make_engine, make_sessionmaker

if TYPE_CHECKING:
    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------
# settings


def make_settings(tmp_path: Path, **overrides) -> Settings:
    """Settings in tmp_path. API keys and rate limits are off unless a test turns them on (the auth tests do)."""
    return Settings(**{"TEXTCLF_DATA_DIR": tmp_path / "data", "AUTH_REQUIRED": False, "RATE_LIMIT_ENABLED": False,
                       **overrides})


def sqlite_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """make_settings on the embedded SQLite database, migrated."""
    settings = make_settings(tmp_path, **overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    return settings


def db_settings(request: pytest.FixtureRequest, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a fixture parametrized with "sqlite" (its own migrated file) or "postgresql" (the session's
    shared database from the `pg_url` fixture)."""
    if request.param == "sqlite":
        return sqlite_settings(tmp_path, **overrides)
    return make_settings(tmp_path, DATABASE_URL=request.getfixturevalue("pg_url"), **overrides)


# ---------------------------------------------------------------------------------------------------------
# datasets


def tiny_dataset_csv() -> bytes:
    """A small learnable dataset the tests write themselves: sports vs cooking sentences."""
    sports = ["the team won the match", "a great goal in the final minute", "the striker scored twice",
              "fans cheered the winning team", "the coach praised the defence", "a penalty decided the game",
              "the keeper saved a late shot", "the league title race is close", "they lost the derby at home",
              "the referee showed a red card", "the midfielder ran the game", "an away win for the champions"]
    cooking = ["bake the bread for forty minutes", "stir the sauce over low heat", "chop the onions finely",
               "season the soup with salt", "whisk the eggs and sugar", "roast the chicken with garlic",
               "simmer the beans until soft", "knead the dough on a floured table", "fry the garlic in olive oil",
               "serve the pasta with fresh basil", "grate the cheese over the dish", "let the cake cool on a rack"]
    lines = ["text,label"]
    for i in range(3):  # repeat with small variations so the split leaves examples of each label
        lines += [f"{s} {'today' if i else ''}".strip() + ",sports" for s in sports]
        lines += [f"{c} {'slowly' if i else ''}".strip() + ",cooking" for c in cooking]
    return ("\n".join(lines) + "\n").encode()


def _labelled_csv(by_label: dict[str, list[str]], prefixes: tuple[str, ...]) -> bytes:
    """CSV of every sentence under its label, once per prefix (the same prefixes for every label, so they carry
    no signal; they only make the repeats differ)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label"])
    for prefix in prefixes:
        for label, sentences in by_label.items():
            writer.writerows([prefix + sentence, label] for sentence in sentences)
    return out.getvalue().encode()


# Sentences in scripts written without spaces, for the character tokenizer's tests (tests/integration/
# test_any_script.py, tests/e2e/test_dashboard_browser.py). Written for these tests, not downloaded.
JAPANESE = {
    "weather": ["今日は朝から雨が降っています。", "明日は晴れて気温が上がるでしょう。",
                "午後から雷を伴う強い雨に注意してください。", "週末は曇りのち雪の予報です。",
                "台風が近づいていて風が強くなっています。", "梅雨入りしてから毎日じめじめしています。",
                "今朝は霧が濃くて前が見えませんでした。", "北の地方では大雪警報が出ています。",
                "夕方には雨がやんで虹が出ました。", "最高気温は三十五度の猛暑日になりそうです。",
                "天気予報によると明日の降水確率は八十パーセントです。",
                "冷たい北風が吹いて冬らしい寒さになりました。"],
    "food": ["このラーメンはスープが濃厚でおいしいです。", "昨日の夜はお寿司を食べに行きました。",
             "母が作るカレーライスが大好きです。", "新しいパン屋さんのクロワッサンはサクサクです。",
             "朝ごはんに納豆とご飯と味噌汁を食べました。", "駅前の店で天ぷらそばを注文しました。",
             "抹茶のアイスクリームは甘さ控えめです。", "焼き鳥にはビールがよく合います。",
             "週末に友だちとたこ焼きを作りました。", "このケーキはいちごがたっぷり乗っています。",
             "お弁当に卵焼きと唐揚げを入れました。", "熱いうどんに七味唐辛子をかけて食べます。"],
}
THAI = {
    "sport": ["ทีมชาติไทยชนะการแข่งขันฟุตบอลเมื่อคืนนี้", "นักเตะยิงประตูได้สองลูกในครึ่งหลัง",
              "ผู้รักษาประตูเซฟลูกจุดโทษได้อย่างยอดเยี่ยม", "นักมวยไทยชนะน็อคในยกที่สาม",
              "ทีมวอลเลย์บอลหญิงเข้ารอบชิงชนะเลิศ", "โค้ชประกาศรายชื่อนักกีฬาชุดใหม่", "แฟนบอลเชียร์ทีมเหย้าเต็มสนาม",
              "นักวิ่งทำลายสถิติมาราธอนของประเทศ", "กรรมการให้ใบแดงกองหลังในนาทีสุดท้าย",
              "นักแบดมินตันไทยคว้าเหรียญทองโอลิมปิก", "สโมสรเซ็นสัญญากับกองหน้าคนใหม่",
              "นักเทนนิสชนะการแข่งขันรอบแรกอย่างง่ายดาย"],
    "food": ["ต้มยำกุ้งรสชาติเผ็ดและเปรี้ยวกำลังดี", "แม่ทำผัดกะเพราหมูสับใส่ไข่ดาว",
             "ร้านนี้ขายข้าวมันไก่อร่อยที่สุด", "ส้มตำจานนี้ใส่พริกเยอะมาก", "ฉันชอบกินข้าวเหนียวมะม่วงเป็นของหวาน",
             "ผัดไทยใส่กุ้งสดและถั่วงอก", "แกงเขียวหวานไก่กินกับข้าวสวยร้อนๆ", "ก๋วยเตี๋ยวเรือน้ำข้นรสเข้มข้น",
             "เช้านี้ฉันกินโจ๊กหมูกับปาท่องโก๋", "ชาไทยเย็นหวานมันชื่นใจ", "หมูปิ้งกับข้าวเหนียวเป็นอาหารเช้ายอดนิยม",
             "ร้านอาหารทะเลริมหาดมีปูผัดผงกะหรี่"],
}
# Chinese labels too: the dashboard shows them. Two sentences carry English brand names and numbers.
CHINESE = {
    "体育": ["主队在最后一分钟攻入制胜球", "这名前锋本赛季已经打进二十个进球", "中国女排三比零战胜对手",
           "球迷们在体育场里为球队欢呼", "教练对今天的防守表现很满意", "裁判向后卫出示了红牌",
           "他在马拉松比赛中打破了全国纪录", "乒乓球世界杯决赛今晚开打", "守门员扑出了一个点球",
           "篮球队在主场输掉了比赛", "游泳运动员获得了奥运会金牌", "他穿着Nike球鞋打完了NBA比赛"],
    "美食": ["这家餐厅的饺子非常好吃", "妈妈做的红烧肉又香又软", "把鸡蛋和西红柿一起炒", "火锅的汤底很辣，记得多喝水",
           "早餐我喝了一碗豆浆吃了两根油条", "小笼包要趁热吃", "这道麻婆豆腐用了很多花椒", "北京烤鸭的皮很脆",
           "用小火慢慢炖牛肉汤", "面条里加一点醋和葱花", "周末我们去吃了广东早茶", "我用iPhone12拍了这碗拉面"],
}


def japanese_dataset_csv() -> bytes:
    """72 Japanese sentences (kanji, hiragana, katakana): weather vs food."""
    return _labelled_csv(JAPANESE, ("", "ニュースによると、", "友だちの話では、"))


def thai_dataset_csv() -> bytes:
    """72 Thai sentences: sport vs food."""
    return _labelled_csv(THAI, ("", "ข่าววันนี้", "เพื่อนบอกว่า"))


def chinese_dataset_csv() -> bytes:
    """72 Chinese sentences, labelled 体育 (sport) or 美食 (food)."""
    return _labelled_csv(CHINESE, ("", "新闻说", "朋友告诉我"))


# Texts of 3,000 words (a small upload: werkzeug spools larger ones to a file): the largest spec the schema
# accepts would take several GiB in its first step on them.
LONG_TEXTS_CSV = ("text,label\n" + "".join(f"{' '.join(['w'] * 3000)} {i},{'ab'[i % 2]}\n" for i in range(20))
                  ).encode()
HUGE_SPEC = {"batch_size": 4096, "tokenizer": {"max_length": 4096},
             "model": {"embedding_dim": 1024, "num_filters": 1024}}


# ---------------------------------------------------------------------------------------------------------
# the API through Flask's test client


class Api:
    """A test client on `create_app(settings)` that checks every reply leaks no traceback or server path."""

    def __init__(self, client: FlaskClient, settings: Settings):
        self.client = client
        self.settings = settings

    def open(self, method: str, url: str, **kwargs: Any) -> TestResponse:
        resp = self.client.open(url, method=method, **kwargs)
        body = resp.get_data(as_text=True)
        assert "Traceback" not in body, body
        assert str(self.settings.data_dir.parent) not in body, body
        return resp

    def get(self, url: str, **kwargs: Any) -> TestResponse:
        return self.open("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> TestResponse:
        return self.open("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> TestResponse:
        return self.open("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> TestResponse:
        return self.open("DELETE", url, **kwargs)

    # what a request may have written

    def total(self, url: str) -> int:
        resp = self.get(url)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json()["total"]

    def dataset_files(self) -> set[str]:
        folder = self.settings.datasets_dir
        return {p.name for p in folder.iterdir()} if folder.exists() else set()

    def queued_messages(self) -> set[str]:
        folder = self.settings.broker_dir / "queue"
        return {p.name for p in folder.iterdir()} if folder.exists() else set()

    def snapshot(self) -> dict[str, Any]:
        return {"datasets": self.total("/v1/datasets"), "jobs": self.total("/v1/jobs"),
                "dataset_files": self.dataset_files(), "messages": self.queued_messages()}

    @contextlib.contextmanager
    def writes_nothing(self) -> Iterator[None]:
        before = self.snapshot()
        yield
        assert self.snapshot() == before

    # shortcuts

    def upload(self, data: bytes = b"", filename: str = "data.csv", **form: str) -> TestResponse:
        return self.post("/v1/datasets", data={"file": (io.BytesIO(data), filename), **form},
                         content_type="multipart/form-data")

    def create_dataset(self, data: bytes | None = None, filename: str = "tiny.csv") -> str:
        resp = self.upload(tiny_dataset_csv() if data is None else data, filename)
        assert resp.status_code == 201, resp.get_data(as_text=True)
        return resp.get_json()["id"]

    def create_job(self, dataset_id: str, **spec: Any) -> dict:
        resp = self.post("/v1/jobs", json={"dataset_id": dataset_id, "epochs": 1, "batch_size": 8, **spec})
        assert resp.status_code == 202, resp.get_data(as_text=True)
        return resp.get_json()


class KeyedApi:
    """An API with keys required, and a helper that makes keys straight in its database."""

    def __init__(self, api: Api, sessionmaker: Any):
        self.api = api
        self.sessionmaker = sessionmaker

    def make_key(self, *scopes: str, name: str = "test") -> str:
        with self.sessionmaker.begin() as session:
            _, secret = api_keys.create_key(session=session, name=name, scopes=list(scopes))
        return secret

    def call(self, method: str, url: str, key: str | None, **kwargs: Any):
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.api.open(method, url, headers=headers, **kwargs)


def assert_error(resp: TestResponse, status: int, code: str, *, says: tuple[str, ...] = ()) -> dict:
    """The reply is the one error shape with this status and code, and its message mentions `says`."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.is_json, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and len(error["message"]) >= 15, error
    for fragment in says:
        assert fragment in error["message"], error
    return error


def locs(error: dict) -> list[list]:
    return [d["loc"] for d in error["details"]]


@contextlib.contextmanager
def running_api(settings: Settings) -> Iterator[tuple[Api, Any]]:
    """An app on `settings` whose engine and Celery client are closed afterwards (warnings are errors here)."""
    from app import create_app  # here: the unit and e2e tests import these helpers without loading the web app

    engine = make_engine(settings.database_url)
    sessionmaker = make_sessionmaker(engine)
    app = create_app(settings, session_factory=sessionmaker)
    try:
        with app.test_client() as client:
            yield Api(client, settings), sessionmaker
    finally:
        state = app.extensions["textclf"]
        if "celery" in state.__dict__:  # created lazily by the first send
            state.celery.close()
        engine.dispose()


# ---------------------------------------------------------------------------------------------------------
# the service as child processes, driven over HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child process read the same settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_DIR", "BASE_MODELS_DIR")}
    env.update(TEXTCLF_DATA_DIR=str(settings.data_dir), DATABASE_URL=settings.database_url,
               CELERY_BROKER_URL=settings.celery_broker_url, ARTIFACT_DIR=str(settings.artifact_dir),
               BASE_MODELS_DIR=str(settings.base_models_dir),
               AUTH_REQUIRED=str(settings.auth_required).lower(),
               RATE_LIMIT_ENABLED=str(settings.rate_limit_enabled).lower(),
               RATE_LIMIT_STORAGE_URL=settings.rate_limit_storage_url, RATE_LIMIT_DEFAULT=settings.rate_limit_default,
               RATE_LIMIT_PREDICT=settings.rate_limit_predict, RATE_LIMIT_TRAIN=settings.rate_limit_train,
               PYTHONUNBUFFERED="1")
    return env


class Processes:
    """Child processes started by a test, each logging to a file; all stopped at teardown."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "wb") as log:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        import signal

        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_http(url: str, timeout: float = 60.0, procs: Processes | None = None) -> None:
    """Wait until `url` answers 200 (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or too busy starting to answer
            pass
        if procs:
            for name, proc in procs.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited early:\n{procs.log(name)[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"{url} did not become ready in {timeout}s")


def wait_job(base: str, job_id: str, timeout: float = 300.0) -> dict:
    """Poll a job until it reaches a terminal status (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}")


def start_serve(tmp_path: Path, processes: Processes, settings: Settings | None = None,
                **env: str) -> tuple[str, subprocess.Popen, Settings]:
    """`textclf serve` on a free port with its own data folder, ready; returns (base URL, process, settings)."""
    settings = settings or make_settings(tmp_path)
    port = free_port()
    serve = processes.start("serve", [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                            {**child_env(settings), **env})
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", timeout=90, procs=processes)
    return base, serve, settings


def upload_tiny(base: str) -> str:
    """Upload the tiny dataset; its id."""
    reply = requests.post(f"{base}/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv())}, timeout=30)
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def wait_running(base: str, job_id: str, timeout: float = 120.0) -> dict:
    """Poll until the job is running and has finished at least one epoch (bounded). A job that ended first
    fails the test at once: give it more epochs than a fast machine trains between two polls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] == "running" and job["history"]:
            return job
        assert job["status"] in ("queued", "running"), f"job {job_id} ended before it was seen training: {job}"
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} was not training after {timeout}s: {job}")


@contextlib.contextmanager
def frozen(pids: list[int], seconds: float = 0.0) -> Iterator[None]:
    """Stop the processes (SIGSTOP), then continue them: a test injects "this step is slow" instead of hoping the
    machine is slow enough. With `seconds`, they are continued that long after the stop, even while the block
    still runs, and the block's exit waits for it: a process stopped inside a database write holds the lock a
    request in the block may wait for. Without, they stay stopped for the whole block."""
    import signal

    def thaw() -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(seconds, thaw) if seconds > 0 else None
    if timer is not None:
        timer.start()
    try:
        yield
        if timer is not None:
            timer.join()
    finally:
        if timer is not None:
            timer.cancel()
        thaw()


def wait_for_log(procs: Processes, name: str, text: str, timeout: float = 60.0) -> None:
    """Wait until the process's log contains `text` (bounded)."""
    deadline = time.monotonic() + timeout
    while text not in procs.log(name):
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} never logged {text!r}:\n{procs.log(name)[-3000:]}")
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (read from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def worker_pid(serve_pid: int) -> int | None:
    """The Celery worker that `textclf serve` started (a direct child running worker.celery_app)."""
    for pid in children(serve_pid):
        try:
            if b"worker.celery_app" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def run_story(base: str) -> None:
    """The acceptance story: upload, train, poll, predict — and the error shape for a bad request."""
    up = requests.post(f"{base}/v1/datasets", files={"file": ("sports_vs_cooking.csv", tiny_dataset_csv())},
                       data={"name": "tiny"}, timeout=30)
    assert up.status_code == 201, up.text
    dataset = up.json()
    assert dataset["row_count"] == 72 and dataset["labels"] == {"cooking": 36, "sports": 36}

    bad = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset["id"], "epochs": 0}, timeout=10)
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "validation_error"
    assert bad.json()["error"]["details"][0]["loc"] == ["epochs"]

    created = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset["id"], "epochs": 2, "batch_size": 8,
                                                     "optimizer": {"name": "adam", "lr": 0.01}}, timeout=10)
    assert created.status_code == 202, created.text
    assert created.headers["Location"] == f"/v1/jobs/{created.json()['id']}"
    job = wait_job(base, created.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    assert len(job["history"]) == 2 and job["device"] == "cpu" and job["attempts"] == 1
    assert job["progress"]["percent"] == 100.0
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr",
            "seconds"} <= set(job["history"][0])

    model = requests.get(f"{base}/v1/models/{job['model_id']}", timeout=10).json()
    assert model["labels"] == ["cooking", "sports"]
    assert model["artifacts"]["model.onnx"] > 0 and "tokenizer.json" in model["artifacts"]
    assert model["metrics"]["onnx_parity"]["argmax_agreement"] == 1.0

    evaluation = requests.get(f"{base}/v1/models/{model['id']}/evaluation", timeout=10).json()
    assert evaluation["validation"]["examples"] > 0 and evaluation["test"] is None
    assert evaluation["validation"]["scored"] == "served_model"  # no refit by default
    assert evaluation["validation"]["confusion_matrix"]["labels"] == ["cooking", "sports"]

    texts = ["the team scored a goal", "stir the soup and season with salt"]
    pred = requests.post(f"{base}/v1/models/{model['id']}/predict", json={"texts": texts, "top_k": 2}, timeout=30)
    assert pred.status_code == 200, pred.text
    body = pred.json()
    assert body["model_id"] == model["id"]
    assert [p["label"] for p in body["predictions"]] == ["sports", "cooking"]
    assert len(body["predictions"][0]["top_k"]) == 2
    assert abs(sum(s["score"] for s in body["predictions"][0]["top_k"]) - 1.0) < 1e-4

    default = requests.post(f"{base}/v1/predict", json={"texts": ["a late goal won the final"]}, timeout=30)
    assert default.status_code == 200 and default.json()["model_id"] == model["id"]

    empty = requests.post(f"{base}/v1/predict", json={"texts": []}, timeout=10)
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "validation_error"


def assert_bundle_agrees_with_api(api: Api, model: dict, bundle: bytes, texts: list[str], folder: Path) -> None:
    """The README's bundle example (app.bundle.USAGE), run in a fresh interpreter in `folder` on `texts`, prints
    the labels the API gives for them, and logits whose softmax is the API's scores."""
    import numpy as np

    from app.bundle import USAGE

    card = json.loads(zipfile.ZipFile(io.BytesIO(bundle)).read("model_card.json"))
    (folder / "model.zip").write_bytes(bundle)
    snippet, found = re.subn(r"^texts = \[.*\]$", "texts = json.loads(sys.argv[1])", USAGE.format(file="model.zip"),
                             flags=re.M)
    assert found == 1
    snippet = "import sys\n" + snippet + "print(json.dumps(logits.tolist()))\n"
    run = subprocess.run([sys.executable, "-c", snippet, json.dumps(texts)], cwd=folder, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    labels_line, logits_line = run.stdout.strip().splitlines()

    resp = api.post(f"/v1/models/{model['id']}/predict", json={"texts": texts, "top_k": len(card["labels"])})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    predictions = resp.get_json()["predictions"]
    assert labels_line == repr([p["label"] for p in predictions])
    logits = np.array(json.loads(logits_line))
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    for row, p in zip(proba, predictions):
        scores = {s["label"]: s["score"] for s in p["top_k"]}
        assert np.allclose(row, [scores[label] for label in card["labels"]], atol=1e-5)
