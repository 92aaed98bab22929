"""LoopState, the training loop's variables: every field goes into the checkpoint and comes back out of it."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from tests.unit.test_train_export import CPU, LABELS, TEXTS, Y, tiny_spec
from worker.ml.checkpoint import CheckpointStore, fingerprint
from worker.ml.train import LoopState, train

pytestmark = pytest.mark.unit

# What the loop saves besides its LoopState: the objects with a state of their own, and the store's own key.
OTHER_KEYS = {"tokenizer", "model", "optimizer", "scheduler", "rng", "fingerprint"}
# The keys of a checkpoint written before LoopState existed: such a file must still resume.
EARLIER_KEYS = {"tokenizer", "model", "optimizer", "scheduler", "rng", "history", "step", "best_value", "best_state",
                "best_epoch", "best", "final", "epochs_since_best", "stopped_early", "done", "elapsed_seconds"}


def a_state_unlike_the_default() -> LoopState:
    values = {
        "history": [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}],
        "step": 17,
        "best_value": 0.75,
        "best_state": {"head.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        "best_epoch": 2,
        "best": {"accuracy": 0.8, "macro_f1": 0.75, "loss": 0.4},
        "final": {"accuracy": 0.7, "macro_f1": 0.65, "loss": 0.45},
        "epochs_since_best": 1,
        "stopped_early": True,
        "done": True,
        "elapsed_seconds": 12.5,
    }
    assert values.keys() == {f.name for f in fields(LoopState)}, "give the new LoopState field a value here"
    state = LoopState(**values)
    default = LoopState()
    for f in fields(LoopState):
        assert getattr(state, f.name) != getattr(default, f.name), f.name  # so a field left out would show
    return state


def assert_same_state(a: LoopState, b: LoopState) -> None:
    for f in fields(LoopState):
        if f.name == "best_state":
            assert a.best_state.keys() == b.best_state.keys()
            for key in a.best_state:
                assert torch.equal(a.best_state[key], b.best_state[key]), key
        else:
            assert getattr(a, f.name) == getattr(b, f.name), f.name


def test_every_field_is_saved_under_its_own_name():
    state = a_state_unlike_the_default()
    saved = state.save()
    assert saved.keys() == {f.name for f in fields(LoopState)}
    assert_same_state(LoopState.restore(saved), state)


def test_a_state_round_trips_through_a_checkpoint_file(tmp_path):
    state = a_state_unlike_the_default()
    store = CheckpointStore(tmp_path, "fp")
    store.save({"model": {"w": torch.ones(2)}, **state.save()})
    loaded = store.load()  # weights_only=True: the state is plain containers and tensors
    assert loaded is not None
    assert_same_state(LoopState.restore(loaded), state)  # the other entries are not read


def test_checkpoints_written_before_loop_state_still_restore():
    assert {f.name for f in fields(LoopState)} <= EARLIER_KEYS, \
        "a new LoopState field is missing from earlier checkpoints: restoring one would fail"


def test_train_saves_the_loop_state_and_the_objects_under_the_earlier_keys(tmp_path):
    spec = tiny_spec(epochs=2)
    store = CheckpointStore(tmp_path / "ckpt", fingerprint(spec.model_dump(mode="json"), "data"))
    result = train(spec, TEXTS, Y, label_names=LABELS, device=CPU, checkpoint=store)
    saved = store.load()
    assert saved is not None and saved.keys() == {f.name for f in fields(LoopState)} | OTHER_KEYS
    assert saved.keys() - {"fingerprint"} == EARLIER_KEYS
    state = LoopState.restore(saved)
    assert state.history == result.history and state.step == result.metrics["steps"]
    assert state.best_epoch == result.metrics["best_epoch"] and state.done and not state.stopped_early
    assert state.elapsed_seconds > 0
