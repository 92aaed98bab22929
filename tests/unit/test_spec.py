import uuid

import pytest
from pydantic import ValidationError

from core.spec import CHAR_FILTER_SIZES, CHAR_TFIDF_WEIGHT, DEFAULT_LR, TrainingSpec, with_tokenizer_kind

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


# names: shown in tables, logs and the dashboard, so nothing that hides or reorders what they say

BAD_NAME_CHARACTERS = {
    "C0 control": "\x01", "delete": "\x7f", "C1 next line": "\x85", "C1 control": "\x9f",
    "right-to-left override": "\u202e", "left-to-right embedding": "\u202a", "first-strong isolate": "\u2068",
    "pop directional isolate": "\u2069", "zero-width space": "\u200b", "zero-width joiner": "\u200d",
    "byte order mark": "\ufeff", "soft hyphen": "\xad", "line separator": "\u2028", "tag letter": "\U000e0041",
}


def _named_bodies(name: str):
    from core.spec import ApiKeyCreate, DatasetCreate
    from core.sweeps import SweepCreate

    dataset_id = str(uuid.uuid4())
    yield TrainingSpec, {"dataset_id": dataset_id, "name": name}
    yield DatasetCreate, {"name": name, "records": [{"text": "a", "label": "x"}]}
    yield ApiKeyCreate, {"name": name, "scopes": ["read"]}
    yield SweepCreate, {"dataset_id": dataset_id, "name": name, "grid": {"optimizer.lr": [0.1, 0.01]}}


@pytest.mark.parametrize("char", BAD_NAME_CHARACTERS.values(), ids=list(BAD_NAME_CHARACTERS))
def test_names_refuse_control_and_invisible_format_characters(char):
    for model, body in _named_bodies(f"invoice{char}gpj.exe"):
        with pytest.raises(ValidationError) as e:
            model.model_validate(body)
        [error] = e.value.errors()
        assert error["loc"] == ("name",), (model, error)
        assert f"U+{ord(char):04X}" in error["msg"] and "control or invisible" in error["msg"], error


def test_names_keep_any_visible_unicode():
    name = "modèle «TREC» – 日本語 עברית 😀 v2"
    for model, body in _named_bodies(name):
        assert model.model_validate(body).name == name


def test_char_text_gets_character_defaults_where_the_spec_is_silent():
    plain = with_tokenizer_kind(spec(), "char")
    assert plain.tokenizer.kind == "char" and plain.model.filter_sizes == CHAR_FILTER_SIZES == (1, 2, 3)
    assert plain.model.tfidf.weight == CHAR_TFIDF_WEIGHT == 0.7
    assert with_tokenizer_kind(plain, "char") == plain  # applying it again changes nothing
    # What a spec or preset sets is kept, and the rest of a section it touches still gets the default.
    own = with_tokenizer_kind(spec(model={"filter_sizes": [2, 4], "tfidf": {"c": 3.0}}), "char")
    assert own.model.filter_sizes == (2, 4) and own.model.tfidf.weight == 0.7 and own.model.tfidf.c == 3.0
    chosen = with_tokenizer_kind(spec(model={"tfidf": {"weight": None}}), "char")
    assert chosen.model.tfidf.weight is None and chosen.model.filter_sizes == (1, 2, 3)
    fast = with_tokenizer_kind(spec(preset="fast"), "char")
    assert fast.model.tfidf.weight == 0.85 and fast.model.filter_sizes == (3, 4, 5)  # fasttext: no convolutions
    assert with_tokenizer_kind(spec(model={"tfidf": None}), "char").model.tfidf is None


@pytest.mark.parametrize("kind", ["word", "bpe", "wordpiece"])
def test_other_kinds_change_nothing_but_the_kind(kind):
    before = spec()
    after = with_tokenizer_kind(before, kind)
    assert after.tokenizer.kind == kind
    assert after.model_dump(exclude={"tokenizer"}) == before.model_dump(exclude={"tokenizer"})
