"""The README stays true: every setting is documented, and the test command is what CI runs."""

from pathlib import Path

import pytest

from app.config import Settings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_configuration_table():
    readme = (ROOT / "README.md").read_text()
    missing = [f.validation_alias for f in Settings.model_fields.values() if f"| `{f.validation_alias}` |" not in readme]
    assert not missing, f"README configuration table lacks {missing}"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
