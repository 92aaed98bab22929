"""Sweeps' pure logic: expansion of grids and random searches, key checks, duplicates, successive halving and the
leaderboard order (core/sweeps.py)."""

from __future__ import annotations

import math
import uuid
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from core.spec import TrainingSpec
from core.sweeps import (
    Pruning,
    SweepCreate,
    SweepError,
    child_row,
    child_specs,
    combinations,
    draw,
    prune_decision,
    rank,
    set_path,
    spec_hash,
)

DATASET = str(uuid.uuid4())


def sweep(**fields) -> SweepCreate:
    return SweepCreate.model_validate({"dataset_id": DATASET, **fields})


def history(*values: float, metric: str = "val_macro_f1") -> list[dict]:
    return [{"epoch": i + 1, "val_macro_f1": v, "val_accuracy": v, "val_loss": 1 - v, "train_loss": 1.0, "lr": 0.1,
             "seconds": 1.0} for i, v in enumerate(values)]


def test_a_grid_is_every_combination_in_order_last_key_fastest():
    request = sweep(grid={"optimizer.name": ["sgd", "adam"], "scheduler.name": ["step", "cosine", "onecycle"]})
    params = combinations(request)
    assert request.size() == 6 and len(params) == 6
    assert params[0] == {"optimizer.name": "sgd", "scheduler.name": "step"}
    assert params[1] == {"optimizer.name": "sgd", "scheduler.name": "cosine"}
    assert params[5] == {"optimizer.name": "adam", "scheduler.name": "onecycle"}


def test_children_are_the_base_spec_with_each_combination_set_and_the_sweeps_name():
    request = sweep(name="opt", base={"epochs": 3, "optimizer": {"weight_decay": 0.01}},
                    grid={"optimizer.name": ["sgd", "adam"], "model.batch_norm": [False, True]})
    children = child_specs(request)
    assert len(children) == 4
    params, spec = children[3]
    assert params == {"optimizer.name": "adam", "model.batch_norm": True}
    assert spec.optimizer.name == "adam" and spec.optimizer.weight_decay == 0.01 and spec.model.batch_norm
    assert spec.epochs == 3 and spec.name == "opt" and str(spec.dataset_id) == DATASET
    assert children[0][1].optimizer.lr == 0.1  # the method's default rate, resolved per child


def test_set_path_creates_sections_and_replaces_non_objects():
    spec: dict = {"optimizer": "oops"}
    set_path(spec, "optimizer.lr", 0.1)
    set_path(spec, "early_stopping.patience", 2)
    set_path(spec, "epochs", 5)
    assert spec == {"optimizer": {"lr": 0.1}, "early_stopping": {"patience": 2}, "epochs": 5}


@pytest.mark.parametrize(("grid", "bad", "kind"), [
    ({"optimizer.nme": [1]}, "optimizer.nme", "unknown_field"),
    ({"learning_rate": [0.1]}, "learning_rate", "unknown_field"),
    ({"epochs.value": [1]}, "epochs.value", "unknown_field"),
    ({"dataset_id": [DATASET]}, "dataset_id", "fixed_field"),
    ({"name": ["x"]}, "name", "fixed_field"),
])
def test_keys_that_are_not_variable_spec_fields_are_named(grid, bad, kind):
    with pytest.raises(SweepError) as info:
        child_specs(sweep(grid=grid))
    assert info.value.details == [{"loc": ["grid", bad], "msg": info.value.details[0]["msg"], "type": kind}]


def test_nested_optional_sections_are_valid_keys():
    children = child_specs(sweep(grid={"early_stopping.patience": [1, 2], "augment.deletion": [0.1]}))
    assert [c[1].early_stopping.patience for c in children] == [1, 2]
    assert children[0][1].augment.deletion == 0.1


def test_an_invalid_combination_names_the_child_and_its_params():
    with pytest.raises(SweepError) as info:
        child_specs(sweep(grid={"optimizer.name": ["adam", "nesterov"], "optimizer.momentum": [0.9, 0.0]}))
    assert "Child 3" in info.value.message and '"nesterov"' in info.value.message
    assert info.value.details[0]["loc"][:3] == ["children", 3, "optimizer"]


def test_an_invalid_base_is_reported_under_base():
    with pytest.raises(SweepError) as info:
        child_specs(sweep(base={"epochs": 0}, grid={"seed": [1, 2]}))
    assert info.value.details[0]["loc"] == ["base", "epochs"]


@pytest.mark.parametrize("fields", [
    {},  # neither grid nor space
    {"grid": {"seed": [1]}, "space": {"seed": [1]}, "samples": 2},
    {"space": {"seed": [1, 2]}},  # space without samples
    {"grid": {"seed": [1]}, "samples": 3},
    {"grid": {}},
    {"grid": {"seed": []}},
    {"base": {"dataset_id": DATASET}, "grid": {"seed": [1]}},
    {"space": {"optimizer.lr": {"low": 0.1, "high": 0.01}}, "samples": 2},
    {"space": {"optimizer.lr": {"low": 0.0, "high": 0.1, "log": True}}, "samples": 2},
    {"space": {"optimizer.lr": {"low": 0.0, "high": math.inf}}, "samples": 2},
    {"grid": {"seed": [1]}, "pruning": {"milestones": [3, 2]}},
    {"grid": {"seed": [1]}, "max_parallel": 0},
])
def test_malformed_requests_are_refused_by_the_schema(fields):
    with pytest.raises(ValidationError):
        sweep(**fields)


def test_random_search_is_reproducible_within_its_ranges_and_log_uniform():
    space = {"optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True}, "epochs": {"low": 2, "high": 6, "integer": True},
             "optimizer.name": ["adam", "sgd"], "model.dropout": {"low": 0.1, "high": 0.6}}
    request = sweep(space=space, samples=400, seed=7)
    a, b = combinations(request), combinations(request)
    assert a == b and len(a) == 400
    assert combinations(sweep(space=space, samples=400, seed=8)) != a
    lrs = [p["optimizer.lr"] for p in a]
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs)
    # Log-uniform: each decade gets about a third of the draws (uniform would put ~90 % in the top one).
    top_decade = sum(lr >= 1e-2 for lr in lrs) / len(lrs)
    assert 0.2 < top_decade < 0.45, top_decade
    assert {p["epochs"] for p in a} == {2, 3, 4, 5, 6}
    assert {p["optimizer.name"] for p in a} == {"adam", "sgd"}
    assert all(0.1 <= p["model.dropout"] <= 0.6 for p in a)


def test_draw_rounds_floats_to_four_significant_digits_and_integers_to_ints():
    space = sweep(space={"optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True},
                         "epochs": {"low": 1, "high": 9, "integer": True}}, samples=1).space
    for params in draw(space, 20, 0):
        assert params["optimizer.lr"] == float(f"{params['optimizer.lr']:.4g}")
        assert isinstance(params["epochs"], int)


def test_the_spec_hash_ignores_the_name_but_not_the_seed_or_data():
    base = {"dataset_id": DATASET, "epochs": 2}
    one = TrainingSpec.model_validate({**base, "name": "a"})
    assert spec_hash(one) == spec_hash(TrainingSpec.model_validate({**base, "name": "b"}))
    assert spec_hash(one) != spec_hash(TrainingSpec.model_validate({**base, "seed": 1}))
    assert spec_hash(one) != spec_hash(TrainingSpec.model_validate({**base, "dataset_id": str(uuid.uuid4())}))
    # adam's default rate is 2e-3: leaving it out and spelling it out is the same run
    assert spec_hash(TrainingSpec.model_validate({**base, "optimizer": {"name": "adam"}})) == \
        spec_hash(TrainingSpec.model_validate({**base, "optimizer": {"name": "adam", "lr": 0.002}}))


# ---------------------------------------------------------------------------------------------------------
# successive halving

HALF = Pruning(milestones=(2, 4), keep_fraction=0.5, min_peers=2)


def test_a_child_behind_the_top_half_at_a_milestone_is_stopped_with_a_reason():
    peers = [history(0.8, 0.9), history(0.7, 0.85), history(0.5, 0.6)]
    reason = prune_decision(history(0.4, 0.55), peers, epoch=2, metric="val_macro_f1", pruning=HALF)
    assert reason is not None and "epoch 2" in reason and "top 2 of 4" in reason and "0.8500" in reason


def test_a_child_in_the_top_half_continues_and_ties_continue():
    peers = [history(0.8, 0.9), history(0.7, 0.85), history(0.5, 0.6)]
    assert prune_decision(history(0.5, 0.88), peers, epoch=2, metric="val_macro_f1", pruning=HALF) is None
    assert prune_decision(history(0.5, 0.85), peers, epoch=2, metric="val_macro_f1", pruning=HALF) is None


def test_only_milestones_decide_and_only_with_enough_peers():
    peers = [history(0.9, 0.9, 0.9), history(0.9, 0.9, 0.9)]
    assert prune_decision(history(0.1, 0.1, 0.1), peers, epoch=3, metric="val_macro_f1", pruning=HALF) is None
    assert prune_decision(history(0.1, 0.1), peers[:1], epoch=2, metric="val_macro_f1", pruning=HALF) is None
    # peers that have not reached the milestone yet do not count
    assert prune_decision(history(0.1, 0.1), [history(0.9), history(0.9)], epoch=2, metric="val_macro_f1",
                          pruning=HALF) is None
    assert prune_decision(history(0.1, 0.1), peers, epoch=2, metric="val_macro_f1", pruning=HALF) is not None


def test_the_best_value_so_far_is_compared_not_the_last_epochs():
    peers = [history(0.7, 0.7), history(0.6, 0.6), history(0.5, 0.5)]
    # 0.8 at epoch 1 then 0.3: its best so far (0.8) leads
    assert prune_decision(history(0.8, 0.3), peers, epoch=2, metric="val_macro_f1", pruning=HALF) is None


def test_val_loss_prunes_the_highest_losses():
    peers = [history(0.9, 0.9), history(0.8, 0.8), history(0.7, 0.7)]  # val_loss 0.1, 0.2, 0.3
    assert prune_decision(history(0.2, 0.2), peers, epoch=2, metric="val_loss", pruning=HALF) is not None
    assert prune_decision(history(0.95, 0.95), peers, epoch=2, metric="val_loss", pruning=HALF) is None


# ---------------------------------------------------------------------------------------------------------
# leaderboard


def job(status: str, hist: list[dict], metrics: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(id=uuid.uuid4(), status=status, progress={}, history=hist, metrics=metrics,
                           model_id=uuid.uuid4() if status == "succeeded" else None, error=None)


def test_finished_children_report_their_jobs_metrics_and_others_their_best_epoch_so_far():
    done = job("succeeded", history(0.5, 0.7), {"best_epoch": 2, "val_accuracy": 0.71, "val_macro_f1": 0.7,
                                                 "val_loss": 0.3, "test_accuracy": 0.69, "test_macro_f1": 0.68,
                                                 "train_seconds": 4.2})
    row = child_row(0, {"seed": 0}, done, metric="val_macro_f1", duplicate_of=None, reused=False, with_history=True)
    assert (row["val_macro_f1"], row["test_accuracy"], row["best_epoch"], row["train_seconds"]) == (0.7, 0.69, 2, 4.2)
    assert len(row["history"]) == 2
    running = child_row(1, {"seed": 1}, job("running", history(0.6, 0.4, 0.5)), metric="val_macro_f1",
                        duplicate_of=None, reused=False, with_history=False)
    assert (running["best_epoch"], running["val_macro_f1"], running["test_accuracy"]) == (1, 0.6, None)
    assert "history" not in running and running["epochs_run"] == 3


def test_the_leaderboard_puts_children_with_models_first_then_by_metric():
    rows = [child_row(i, {"i": i}, j, metric="val_macro_f1", duplicate_of=None, reused=False, with_history=False)
            for i, j in enumerate([job("succeeded", history(0.6)), job("running", history(0.9)),
                                   job("succeeded", history(0.8)), job("queued", []), job("pruned", history(0.2))])]
    for row, value in zip(rows, [0.6, None, 0.8, None, None]):
        if value is not None:
            row["val_macro_f1"] = value  # as the job's metrics would give
    board = rank(rows, "val_macro_f1")
    assert [c["index"] for c in board] == [2, 0, 1, 4]
    assert [c["rank"] for c in board] == [1, 2, 3, 4] and rows[3]["rank"] is None


def test_duplicates_are_not_ranked_twice():
    rows = [child_row(i, {"i": i}, job("running", history(0.5)), metric="val_macro_f1", duplicate_of=d,
                      reused=False, with_history=False) for i, d in enumerate([None, 0])]
    assert [c["index"] for c in rank(rows, "val_macro_f1")] == [0]
