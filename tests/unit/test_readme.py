"""The README stays true: every setting is documented, and the test command is what CI runs."""

import re
from pathlib import Path

import pytest

from core.config import Settings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_configuration_table():
    readme = (ROOT / "README.md").read_text()
    missing = [f.validation_alias for f in Settings.model_fields.values()
               if f"| `{f.validation_alias}` |" not in readme]
    assert not missing, f"README configuration table lacks {missing}"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_training_spec_field_is_in_the_spec_table():
    from core.spec import ModelSpec, OptimizerSpec, SchedulerSpec, TokenizerSpec, TrainingSpec

    readme = (ROOT / "README.md").read_text()
    start = readme.index("### The training spec")
    table = readme[start : readme.index("\n\n", readme.index("| field |", start))]
    # A row names a nested field in full once (`optimizer.lr`) and its siblings after it plainly (`eps`).
    missing = [name for name in TrainingSpec.model_fields if f"`{name}`" not in table and f"`{name}." not in table]
    for section, spec in (("model", ModelSpec), ("tokenizer", TokenizerSpec), ("optimizer", OptimizerSpec),
                          ("scheduler", SchedulerSpec)):
        missing += [f"{section}.{name}" for name in spec.model_fields
                    if f"`{section}.{name}`" not in table and f"`{name}`" not in table]
    assert not missing, f"README's training spec table lacks {missing}"


def test_every_curl_to_the_api_sends_the_key_and_a_download_saves_no_error():
    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")  # a command continued over lines is one line
    commands = [line.strip() for line in readme.splitlines() if line.lstrip().startswith("curl ")]
    assert len(commands) > 10
    assert not [c for c in commands if "/v1/" in c and '-H "$AUTH"' not in c], "a /v1 call without the API key"
    # Without -f, curl saves a 401's or 404's JSON error as the file and exits 0.
    downloads = [c for c in commands if re.search(r"\s-o\s", c)]
    assert downloads and not [c for c in downloads if not re.search(r"\s(-[a-zA-Z]*f[a-zA-Z]*|--fail)\s", c)]


def _architecture_tree() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Architecture"):]
    return section[section.index("```\n") + 4:section.index("\n```", section.index("```\n") + 4)]


def test_the_architecture_tree_names_every_module_and_only_modules_that_exist():
    tree = _architecture_tree()
    named = set(re.findall(r"[\w]+(?=\.py\b)", tree)) | set(re.findall(r"(?<![\w/.])([a-z_]+)(?=[,;)\s]|$)", tree))
    modules = [p for layer in ("core", "app", "worker") for p in (ROOT / layer).rglob("*.py")]
    unnamed = sorted(str(p.relative_to(ROOT)) for p in modules
                     if p.stem not in ("__init__", "__main__") and p.stem not in named)
    assert not unnamed, f"README's architecture tree lacks {unnamed}"
    stems = {p.stem for p in modules} | {p.stem for p in (ROOT / "tests").glob("*.py")}
    invented = sorted(set(re.findall(r"([\w]+)\.py\b", tree)) - stems)
    assert not invented, f"README's architecture tree names modules that do not exist: {invented}"
    for folder in re.findall(r"^(\w+)/", tree, flags=re.M) + re.findall(r"^  (\w+)/", tree, flags=re.M):
        assert any((ROOT / layer / folder).is_dir() for layer in ("", "core", "app", "worker")), folder
