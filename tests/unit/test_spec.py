import uuid

import pytest
from pydantic import ValidationError

from app.spec import DEFAULT_LR, TrainingSpec

pytestmark = pytest.mark.unit


def spec(**fields):
    return TrainingSpec.model_validate({"dataset_id": str(uuid.uuid4()), **fields})


def test_dataset_id_alone_is_a_complete_spec():
    s = spec()
    assert s.model.name == "textcnn" and s.optimizer.name == "adamw" and s.optimizer.lr == DEFAULT_LR["adamw"]
    assert s.optimizer.weight_decay == 0.05
    assert s.early_stopping is not None and s.early_stopping.patience == 2
    assert s.epochs >= 1 and 0 < s.validation_split < 1


@pytest.mark.parametrize(("optimizer", "decay"), [
    ({"name": "adamw"}, 0.05), ({"name": "adam"}, 0.0), ({"name": "sgd"}, 0.0),
    ({"name": "adamw", "weight_decay": 0.0}, 0.0), ({"name": "sgd", "weight_decay": None}, 0.0),
    ({"weight_decay": 0.2}, 0.2),
])
def test_weight_decay_defaults_per_method_and_an_explicit_value_wins(optimizer, decay):
    assert spec(optimizer=optimizer).optimizer.weight_decay == decay


def test_early_stopping_is_on_by_default_and_null_turns_it_off():
    assert spec(early_stopping=None).early_stopping is None
    assert spec(early_stopping={"patience": 5}).early_stopping.patience == 5


@pytest.mark.parametrize("name", list(DEFAULT_LR))
def test_each_optimizer_gets_its_default_learning_rate(name):
    assert spec(optimizer={"name": name}).optimizer.lr == DEFAULT_LR[name]


def test_explicit_learning_rate_wins():
    assert spec(optimizer={"name": "sgd", "lr": 0.3}).optimizer.lr == 0.3


@pytest.mark.parametrize("fields, loc", [
    ({"epochs": 0}, ("epochs",)),
    ({"epochs": 10_000}, ("epochs",)),
    ({"bogus": 1}, ("bogus",)),
    ({"optimizer": {"name": "lbfgs"}}, ("optimizer", "name")),
    ({"optimizer": {"name": "adam", "colour": "red"}}, ("optimizer", "colour")),
    ({"scheduler": {"name": "exotic"}}, ("scheduler", "name")),
    ({"validation_split": 0.9}, ("validation_split",)),
    ({"model": {"name": "textcnn", "filter_sizes": [3, 99]}}, ("model",)),
    ({"optimizer": {"name": "nesterov", "momentum": 0.0}}, ("optimizer",)),
    ({"device": "tpu"}, ("device",)),
    ({"dataset_id": "not-a-uuid"}, ("dataset_id",)),
])
def test_bad_specs_name_the_field(fields, loc):
    with pytest.raises(ValidationError) as info:
        spec(**fields)
    assert any(tuple(e["loc"][: len(loc)]) == loc for e in info.value.errors()), info.value.errors()


def test_spec_is_frozen_and_round_trips_through_json():
    s = spec(optimizer={"name": "momentum"}, scheduler={"name": "cosine"})
    again = TrainingSpec.model_validate(s.model_dump(mode="json"))
    assert again == s
    with pytest.raises(ValidationError):
        s.epochs = 3


WEIRD = [None, 5, "x", [], {}, {"a": 1}, [1, 2], True, 1.5]


@pytest.mark.parametrize("preset", ["default", "fast"])
def test_values_of_any_type_anywhere_are_validation_errors_never_crashes(preset):
    # Found by schemathesis: {"optimizer": {"name": {...}}} raised TypeError (a 500) in a before-validator.
    cases = [{section: w} for section in ("model", "optimizer", "scheduler", "tokenizer", "early_stopping",
                                          "augment", "class_weights", "preset") for w in WEIRD]
    cases += [{section: {key: w}} for section in ("model", "optimizer", "scheduler", "tokenizer", "early_stopping",
                                                  "augment")
              for key in ("name", "lr", "gamma", "milestones", "metric", "kind") for w in WEIRD]
    for fields in cases:
        try:
            spec(**{"preset": preset, **fields})
        except ValidationError:
            pass
