"""The client verbs' own logic: building a spec from flags, routing `jobs ID`, and error messages."""

import json

import click
import pytest
from click.testing import CliRunner

from app.cli import main
from app.client_cli import ApiError, Client, build_spec

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
                                  ["predict", "hello"], ["alias", "set", "default", "m1"]])
def test_every_verb_calls_the_server_and_fails_cleanly_when_it_is_down(args):
    result = CliRunner().invoke(main, [*args, "--url", NOWHERE])
    assert result.exit_code == 1, result.output
    assert f"cannot reach {NOWHERE}" in result.output


def test_url_and_key_come_from_the_environment():
    result = CliRunner().invoke(main, ["models"], env={"TEXTCLF_URL": NOWHERE, "TEXTCLF_API_KEY": "k"})
    assert result.exit_code == 1 and f"cannot reach {NOWHERE}" in result.output


def test_a_key_is_sent_as_a_bearer_token():
    assert Client(NOWHERE, "s3cret").session.headers["Authorization"] == "Bearer s3cret"
    assert "Authorization" not in Client(NOWHERE, None).session.headers


def test_cancel_needs_a_job_id():
    result = CliRunner().invoke(main, ["jobs", "cancel", "--url", NOWHERE])
    assert result.exit_code == 2 and "Missing argument" in result.output
