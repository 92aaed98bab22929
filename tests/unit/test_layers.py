"""The layers, checked on the source: app → core ← worker, and no blueprint imports another (docs: STYLE.md).

Every import statement counts, at module level or inside a function (where the code defers heavy imports), and
`from x import y` counts as importing both x and x.y, since y may be a submodule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.unit

LAYERS = ("core", "app", "worker")
BLUEPRINT_PACKAGE = "app.api"

# What each layer must not import (top-level package names); flask_* extensions count as flask.
FORBIDDEN = {
    "core": {"flask", "torch", "transformers", "app", "worker"},
    "app": {"worker", "torch", "transformers"},
    "worker": {"app", "flask"},
}


def module_name(path: Path) -> str:
    """`core/db/jobs.py` -> `core.db.jobs`; a package's `__init__.py` is the package."""
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, dotted module name) for every import in the tree, relative ones resolved against `module`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


def defines_blueprint(tree: ast.Module) -> bool:
    """Whether the module assigns `bp = Blueprint(...)` (or `flask.Blueprint(...)`) at its top level."""
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            func = node.value.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called == "Blueprint" and any(isinstance(t, ast.Name) and t.id == "bp" for t in targets):
                return True
    return False


def top_package(name: str) -> str:
    top = name.split(".", 1)[0]
    return "flask" if top.startswith("flask_") else top


def find_violations(sources: dict[str, str]) -> list[str]:
    """Layering violations in `sources` ({relative path: source text}), each as "path:line: what is wrong"."""
    trees = {path: ast.parse(text, filename=path) for path, text in sources.items()}
    modules = {path: module_name(Path(path)) for path in sources}
    blueprints = {modules[path] for path, tree in trees.items()
                  if modules[path].rpartition(".")[0] == BLUEPRINT_PACKAGE and defines_blueprint(tree)}
    found = []
    for path, tree in trees.items():
        module = modules[path]
        layer = module.split(".", 1)[0]
        seen = set()
        for line, name in imported_names(tree, module, Path(path).name == "__init__.py"):
            top = top_package(name)
            if top in FORBIDDEN.get(layer, ()) and (line, top) not in seen:
                seen.add((line, top))
                found.append(f"{path}:{line}: {layer}/ imports {name} ({layer}/ must not import {top})")
            if module in blueprints:
                other = next((bp for bp in blueprints if bp != module and (name == bp or name.startswith(bp + "."))),
                             None)
                if other and (line, other) not in seen:
                    seen.add((line, other))
                    found.append(f"{path}:{line}: blueprint {module} imports blueprint {other}")
    return found


def project_sources() -> dict[str, str]:
    return {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
            for layer in LAYERS for path in sorted((ROOT / layer).rglob("*.py"))}


@pytest.fixture(scope="module")
def violations() -> list[str]:
    return find_violations(project_sources())


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_what_it_must_not(violations: list[str], layer: str):
    wrong = [v for v in violations if v.startswith(f"{layer}/") and "blueprint" not in v]
    assert not wrong, "\n".join(wrong)


def test_no_blueprint_imports_another(violations: list[str]):
    wrong = [v for v in violations if "imports blueprint" in v]
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_every_layer_and_the_blueprints():
    sources = project_sources()
    assert {path.split("/", 1)[0] for path in sources} == set(LAYERS)
    blueprints = {module_name(Path(p)) for p, text in sources.items()
                  if p.startswith("app/api/") and defines_blueprint(ast.parse(text))}
    assert blueprints == {f"app.api.{name}" for name in ("base_models", "datasets", "health", "jobs", "keys", "models",
                                                          "sweeps")}


def test_the_checker_catches_each_kind_of_violation():
    blueprint = "from flask import Blueprint\n\nbp = Blueprint({name!r}, __name__)\n"
    sources = {
        "core/fine.py": "import json\nfrom core import errors\n",
        "core/web.py": "import os\n\n\ndef handler():\n    from flask import request\n    import flask_cors\n",
        "core/model.py": "from torch import nn\nimport transformers.models\n",
        "core/up.py": "from app.extensions import state\nimport worker.tasks\n",
        "app/views.py": "def train():\n    from worker.training import run_training\n    import torch.nn\n",
        "app/api/__init__.py": "",
        "app/api/common.py": "from app.api.jobs import helper\n",  # not a blueprint: allowed
        "app/api/jobs.py": blueprint.format(name="jobs") + "from app.api import common, models\n",
        "app/api/models.py": blueprint.format(name="models") + "\ndef view():\n    from .jobs import bp as jobs_bp\n",
        "worker/tasks.py": "from app import create_app\n",
    }
    assert sorted(find_violations(sources)) == sorted([
        "core/web.py:5: core/ imports flask (core/ must not import flask)",
        "core/web.py:6: core/ imports flask_cors (core/ must not import flask)",
        "core/model.py:1: core/ imports torch (core/ must not import torch)",
        "core/model.py:2: core/ imports transformers.models (core/ must not import transformers)",
        "core/up.py:1: core/ imports app.extensions (core/ must not import app)",
        "core/up.py:2: core/ imports worker.tasks (core/ must not import worker)",
        "app/views.py:2: app/ imports worker.training (app/ must not import worker)",
        "app/views.py:3: app/ imports torch.nn (app/ must not import torch)",
        "app/api/jobs.py:4: blueprint app.api.jobs imports blueprint app.api.models",
        "app/api/models.py:6: blueprint app.api.models imports blueprint app.api.jobs",
        "worker/tasks.py:1: worker/ imports app (worker/ must not import app)",
    ])
