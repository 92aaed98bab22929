"""The client verbs' own logic: building a spec or a sweep from flags, routing `jobs ID`, the sweep leaderboard,
and error messages."""

import json

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from app.cli import main
from app.cli.client import ApiError, Client, build_spec, jobs_table, partial_spec
from app.cli.sweeps import best_text, leaderboard_table, parse_grid, parse_milestones, parse_space, sweep_body

pytestmark = pytest.mark.unit

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def test_spec_from_file_then_sets(tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"epochs": 3, "optimizer": {"name": "adam", "lr": 0.001}}))
    spec = build_spec("d1", spec_file, ("optimizer.lr=0.01", "model.name=fasttext", "model.filter_sizes=[3,4]",
                                        "class_weights=balanced", "early_stopping=null"))
    assert spec == {"epochs": 3, "optimizer": {"name": "adam", "lr": 0.01},
                    "model": {"name": "fasttext", "filter_sizes": [3, 4]}, "class_weights": "balanced",
                    "early_stopping": None, "dataset_id": "d1"}


@pytest.mark.parametrize("bad", ["epochs", "=3", "epochs.x=1"])
def test_bad_set_is_a_usage_error(bad):
    with pytest.raises(click.BadParameter):
        build_spec("d1", None, ("epochs=3", bad))


def test_api_error_shows_message_status_and_fields():
    error = ApiError(422, {"error": {"code": "validation_error", "message": "Request body is invalid.",
                                     "details": [{"loc": ["optimizer", "lr"], "msg": "must be > 0"}]}})
    assert error.message == ("Request body is invalid. (HTTP 422, validation_error)\n  optimizer.lr: must be > 0")
    assert ApiError(502, None).message.endswith("(HTTP 502, error)")


@pytest.mark.parametrize("args", [["jobs"], ["jobs", "0b7e5a52"], ["jobs", "--status", "running"],
                                  ["jobs", "cancel", "0b7e5a52"], ["models"], ["datasets", "list"],
                                  ["predict", "hello"], ["alias", "set", "default", "m1"],
                                  ["sweep"], ["sweep", "5e1f"], ["sweep", "show", "5e1f", "--watch"],
                                  ["sweep", "create", "d1", "--grid", "optimizer.name=sgd,adam", "--set", "epochs=2"],
                                  ["sweep", "create", "d1", "--random", "4", "--space", "optimizer.lr=log:1e-4:1e-1"],
                                  ["sweep", "cancel", "5e1f"], ["sweep", "promote", "5e1f", "prod"]])
def test_every_verb_calls_the_server_and_fails_cleanly_when_it_is_down(args):
    result = CliRunner().invoke(main, [*args, "--url", NOWHERE])
    assert result.exit_code == 1, result.output
    assert f"cannot reach {NOWHERE}" in result.output


def test_url_and_key_come_from_the_environment():
    result = CliRunner().invoke(main, ["models"], env={"TEXTCLF_URL": NOWHERE, "TEXTCLF_API_KEY": "k"})
    assert result.exit_code == 1 and f"cannot reach {NOWHERE}" in result.output


@pytest.mark.parametrize("args", [["--url", NOWHERE, "predict", "hi"], ["--url", NOWHERE, "sweep", "5e1f"],
                                  ["--url", "http://127.0.0.1:7", "models", "--url", NOWHERE]])
def test_url_works_before_the_command_and_after_it_wins(args):
    result = CliRunner().invoke(main, args, env={"TEXTCLF_URL": "http://127.0.0.1:8"})
    assert result.exit_code == 1, result.output
    assert f"cannot reach {NOWHERE}" in result.output


def test_url_and_key_before_a_command_that_is_no_client_are_refused():
    # `keys create` works on the local database: a --url for another server must not be silently ignored.
    result = CliRunner().invoke(main, ["--url", NOWHERE, "keys", "list"])
    assert result.exit_code == 2 and "--url is for the client commands" in result.output


def test_a_key_is_sent_as_a_bearer_token():
    assert Client(NOWHERE, "s3cret").session.headers["Authorization"] == "Bearer s3cret"
    assert "Authorization" not in Client(NOWHERE, None).session.headers


def test_cancel_needs_a_job_id():
    result = CliRunner().invoke(main, ["jobs", "cancel", "--url", NOWHERE])
    assert result.exit_code == 2 and "Missing argument" in result.output


# ---------------------------------------------------------------------------------------------------------
# textclf sweep: flags -> request body, and the leaderboard drawn from a SweepRead


def test_grid_values_parse_like_set():
    grid = parse_grid(("optimizer.name=sgd,momentum,adam", "optimizer.lr=0.1, 1e-3", "model.batch_norm=true,false",
                       'early_stopping=null,{"patience":2,"metric":"val_loss"}', "model.filter_sizes=[3,4],[2,3,4]",
                       'name="a,b",c'))
    assert grid == {"optimizer.name": ["sgd", "momentum", "adam"], "optimizer.lr": [0.1, 0.001],
                    "model.batch_norm": [True, False],
                    "early_stopping": [None, {"patience": 2, "metric": "val_loss"}],
                    "model.filter_sizes": [[3, 4], [2, 3, 4]], "name": ["a,b", "c"]}


@pytest.mark.parametrize("items", [("optimizer.name",), ("=sgd",), ("optimizer.name=",), ("optimizer.name=sgd,,adam",),
                                   ("epochs=2,3", "epochs=4")])
def test_bad_grid_is_a_usage_error(items):
    with pytest.raises(click.BadParameter):
        parse_grid(items)


def test_space_ranges_and_choices():
    space = parse_space(("optimizer.lr=log:1e-4:1e-1", "model.dropout=0.1:0.6", "epochs=int:3:10",
                         "model.embed_dim=log:int:16:256", "optimizer.name=adam,sgd"))
    assert space == {"optimizer.lr": {"low": 1e-4, "high": 0.1, "log": True},
                     "model.dropout": {"low": 0.1, "high": 0.6},
                     "epochs": {"low": 3, "high": 10, "integer": True},
                     "model.embed_dim": {"low": 16, "high": 256, "log": True, "integer": True},
                     "optimizer.name": ["adam", "sgd"]}


@pytest.mark.parametrize("item", ["optimizer.lr=log:1e-4", "optimizer.lr=1:2:3", "optimizer.lr=log:a:1",
                                  "epochs=int:3:7.5", "model.dropout=true:1", "epochs=bogus:1:2"])
def test_bad_space_is_a_usage_error(item):
    with pytest.raises(click.BadParameter):
        parse_space((item,))


def test_sweep_body_from_a_spec_file_and_sets(tmp_path):
    spec_file = tmp_path / "base.json"
    spec_file.write_text(json.dumps({"dataset_id": "from-train", "epochs": 3, "model": {"name": "textcnn"}}))
    base = partial_spec(spec_file, ("epochs=6", "optimizer.weight_decay=0.01"))
    body = sweep_body("d1", base=base, grid=parse_grid(("optimizer.name=sgd,adam",)), space={}, metric="val_loss",
                      max_parallel=2, milestones=parse_milestones("2,4"), keep_fraction=0.5, name="opt")
    # the argument names the dataset; the file's dataset_id would be an unknown key in a partial spec
    assert body == {"dataset_id": "d1", "name": "opt",
                    "base": {"epochs": 6, "model": {"name": "textcnn"}, "optimizer": {"weight_decay": 0.01}},
                    "grid": {"optimizer.name": ["sgd", "adam"]}, "metric": "val_loss", "max_parallel": 2,
                    "pruning": {"milestones": [2, 4], "keep_fraction": 0.5}}
    random = sweep_body("d1", base={}, grid={}, space=parse_space(("optimizer.lr=log:1e-4:1e-1",)), samples=8,
                        seed=3)
    assert random == {"dataset_id": "d1", "base": {}, "space": {"optimizer.lr": {"low": 1e-4, "high": 0.1,
                                                                                  "log": True}},
                      "samples": 8, "seed": 3}


@pytest.mark.parametrize("kwargs", [
    {"grid": {"epochs": [1]}, "space": {"epochs": [1]}, "samples": 2},  # both kinds of search
    {"grid": {}, "space": {"epochs": [1]}},                             # a space without --random N
    {"grid": {}, "space": {}, "samples": 4},                            # --random N without a space
    {"grid": {}, "space": {}},                                          # nothing to search
    {"grid": {"epochs": [1]}, "space": {}, "keep_fraction": 0.5},       # --keep-fraction without --prune
])
def test_sweep_body_refuses_what_cannot_be_a_sweep(kwargs):
    with pytest.raises(click.UsageError):
        sweep_body("d1", base={}, **kwargs)


@pytest.mark.parametrize("text", ["2,x", "0,2", ""])
def test_bad_prune_epochs(text):
    with pytest.raises(click.BadParameter):
        parse_milestones(text)


def child(index: int, params: dict, status: str, rank: int | None, f1: float | None = None, **extra) -> dict:
    """A Child of GET /v1/sweeps/{id} without history (docs: notes/sweep-contract.md)."""
    return {"index": index, "params": params, "job_id": f"j{index}", "status": status, "duplicate_of": None,
            "reused": False, "progress": {"stage": status, "epoch": 2, "total_epochs": 4, "percent": 50.0},
            "epochs_run": 2, "best_epoch": 2 if f1 is not None else None, "val_accuracy": f1 and f1 + 0.01,
            "val_macro_f1": f1, "val_loss": f1 and 1 - f1, "test_accuracy": None, "test_macro_f1": None,
            "train_seconds": None, "model_id": None, "rank": rank, "error": None, **extra}


def a_sweep() -> dict:
    model = "7d0c2b9e-1111-4a4a-9c9c-0123456789ab"
    children = [
        child(0, {"optimizer.name": "sgd"}, "succeeded", 2, 0.75, test_accuracy=0.7, train_seconds=12.34,
              model_id="m-sgd"),
        child(1, {"optimizer.name": "adam"}, "succeeded", 1, 0.9123, test_accuracy=0.88, test_macro_f1=0.87,
              train_seconds=10.0, model_id=model),
        child(2, {"optimizer.name": "momentum"}, "pruned", 3, 0.5,
              error={"code": "pruned", "message": "stopped after epoch 2: below the kept half"}),
        child(3, {"optimizer.name": "rmsprop"}, "running", None),
        child(4, {"optimizer.name": "adam"}, "succeeded", 4, 0.9123, duplicate_of=1, model_id=model),
    ]
    best = {k: v for k, v in children[1].items() if k != "history"}
    return {"id": "5e1f0000-aaaa-4bbb-8ccc-000000000001", "name": "opt", "dataset_id": "d1", "status": "running",
            "metric": "val_macro_f1", "higher_is_better": True, "max_parallel": 2, "search": "grid",
            "grid": {"optimizer.name": ["sgd", "adam", "momentum", "rmsprop", "adam"]}, "space": None,
            "samples": None, "base": {"epochs": 4}, "pruning": {"milestones": [2], "keep_fraction": 0.5},
            "counts": {"queued": 0, "running": 1, "succeeded": 3, "failed": 0, "cancelled": 0, "pruned": 1},
            "created_at": "2026-11-27T10:00:00Z", "finished_at": None, "wall_seconds": None,
            "children": children, "leaderboard": [c for c in children if c["rank"]], "best": best}


def rendered(renderable) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


def test_leaderboard_lists_every_child_best_first():
    text = rendered(leaderboard_table(a_sweep()))
    rows = [line.split() for line in text.splitlines() if any(f" {name} " in line for name in ("adam", "sgd",
                                                                                               "momentum", "rmsprop"))]
    # ranked children by rank, then the running one that has no metric yet; a column per searched field
    assert [row[:3] for row in rows] == [["1", "1", "adam"], ["2", "0", "sgd"], ["3", "2", "momentum"],
                                         ["4", "4", "adam"], ["–", "3", "rmsprop"]]
    best, _, pruned, duplicate, running = rows
    # rank, child, param, status, best epoch, val acc, val F1, test acc, test F1, train s, short model id
    assert best == ["1", "1", "adam", "succeeded", "2", "0.922", "0.912", "0.880", "0.870", "10.0", "7d0c2b9e"]
    assert pruned[3] == "pruned" and duplicate[3:5] == ["succeeded", "=#1"]
    assert running == ["–", "3", "rmsprop", "running"] + ["–"] * 7
    assert "leaderboard (val_macro_f1, higher is better)" in text


def test_leaderboard_shows_what_the_sweep_ranks_by_and_skips_empty_test_columns():
    children = [{**c, "test_accuracy": None, "test_macro_f1": None} for c in a_sweep()["children"]]
    table = leaderboard_table({**a_sweep(), "metric": "val_loss", "higher_is_better": False, "children": children})
    headers = [str(column.header).replace("\n", " ") for column in table.columns]
    assert headers == ["rank", "#", "optimizer name", "status", "best epoch", "val acc", "val F1", "val loss",
                       "train s", "model"]
    assert [str(c.header) for c in table.columns if c.style == "bold"] == ["val\nloss"]
    assert "lower is better" in rendered(table)


def test_best_child_line():
    sweep = a_sweep()
    assert rendered(best_text(sweep)).strip() == ("best: child #1 optimizer.name=adam  val_macro_f1 0.912  model "
                                                  "7d0c2b9e-1111-4a4a-9c9c-0123456789ab")
    assert "no child has succeeded" in rendered(best_text({**sweep, "best": None}))


def test_watching_a_sweep_needs_its_id():
    result = CliRunner().invoke(main, ["sweep", "show", "--watch", "--url", NOWHERE])
    assert result.exit_code == 2 and "give its id" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--grid", "optimizer.name"], "expected KEY=VALUES"),
    (["--grid", "epochs=1", "--random", "2", "--space", "optimizer.lr=0.1:1"], "not both"),
    (["--prune", "two"], "expected epochs like 2,4"),
])
def test_sweep_create_flag_errors_stop_before_any_request(args, message):
    result = CliRunner().invoke(main, ["sweep", "create", "d1", *args, "--url", NOWHERE])
    assert result.exit_code == 2 and message in result.output, result.output


def test_jobs_listing_shows_the_served_models_val_accuracy_not_the_networks_last_epoch():
    epoch = {"epoch": 6, "train_loss": 0.3, "val_loss": 0.9, "val_accuracy": 0.462, "val_macro_f1": 0.4, "lr": 0.0,
             "seconds": 1.0}
    done = {"id": "0b7e5a52-0000-4000-8000-000000000001", "status": "succeeded", "history": [epoch],
            "progress": {"percent": 100.0, "epoch": 6, "total_epochs": 6},
            "metrics": {"val_accuracy": 0.866, "network_val_accuracy": 0.47, "best_epoch": 4}}
    running = {**done, "id": "0b7e5a52-0000-4000-8000-000000000002", "status": "running", "metrics": None,
               "progress": {"percent": 50.0, "epoch": 6, "total_epochs": 12}}
    text = rendered(jobs_table({"items": [done, running], "total": 2}))
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if "0b7e5a52" in line]
    assert rows == [[done["id"], "succeeded", "100% 6/6", "0.866"],
                    [running["id"], "running", "50% 6/12", "–"]]  # no model yet: no figure to show
