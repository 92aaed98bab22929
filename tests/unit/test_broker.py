"""The embedded broker keeps every file it writes under the data directory."""

from core.broker import make_celery
from core.config import Settings


def test_the_filesystem_broker_writes_nothing_in_the_working_directory(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    settings = Settings(**{"TEXTCLF_DATA_DIR": tmp_path / "data", "CELERY_BROKER_URL": "filesystem://"})
    celery = make_celery(settings)
    # A broadcast (what `celery inspect` and the worker's pidbox use) declares the control exchange's table.
    assert celery.control.ping(timeout=0.1) == []
    assert list(cwd.iterdir()) == []
    assert any((settings.broker_dir / "control").iterdir())


def test_the_worker_parent_preloads_the_training_code_without_initialising_cuda():
    """worker_init imports torch and the training code in the Celery parent, so each job's forked process starts
    with them; CUDA must stay untouched there (forked children could not use it)."""
    import json
    import subprocess
    import sys

    wanted = ["onnxscript", "torch", "torch._dynamo", "worker.ml.export", "worker.ml.train"]
    code = (f"import json, sys, worker.celery_app as w; before = [m for m in {wanted!r} if m in sys.modules]; "
            "w.preload_training_code(); import torch; "
            f"print(json.dumps([before, [m for m in {wanted!r} if m in sys.modules], torch.cuda.is_initialized()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    before, after, cuda_initialised = json.loads(out.stdout)
    assert before == [] and after == wanted and cuda_initialised is False
