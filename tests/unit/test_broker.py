"""The embedded broker keeps every file it writes under the data directory."""

from app.broker import make_celery
from app.config import Settings


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
