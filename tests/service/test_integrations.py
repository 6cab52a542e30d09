"""A job's `integrations`: OpenAI's W&B shape is accepted, normalised as the job object reports it, and mapped
to config keys the trainer's own parser accepts; anything else is a 400 naming the field."""

import pytest

from tuneforge.config import build_config, parse_overrides
from tuneforge.service.errors import APIError
from tuneforge.service.integrations import integration_env, integration_overrides, parse_integrations

pytestmark = pytest.mark.service


def test_wandb_integration_is_normalised_to_openais_job_shape():
    parsed = parse_integrations([{"type": "wandb", "wandb": {"project": "tickets", "tags": ["a", "b"]}}])
    assert parsed == [
        {"type": "wandb", "wandb": {"project": "tickets", "name": None, "entity": None, "tags": ["a", "b"]}}
    ]
    assert parse_integrations(None) == [] and parse_integrations([]) == []


def test_overrides_are_config_keys_the_trainer_accepts():
    parsed = parse_integrations(
        [{"type": "wandb", "wandb": {"project": "tickets run", "name": "first", "entity": "acme"}}]
    )
    overrides = integration_overrides(parsed)
    assert overrides == {"report_to": "wandb", "project": "tickets run", "run_name": "first"}
    # The trainer's own parser, as `tuneforge train ... key=value` reads them.
    config = build_config({"data": "train.jsonl"}, parse_overrides([f"{k}={v}" for k, v in overrides.items()]))
    assert (config.report_to, config.project, config.run_name) == (["wandb"], "tickets run", "first")
    assert integration_env(parsed) == {"WANDB_ENTITY": "acme"}


def test_without_a_name_the_run_is_named_by_the_trainer():
    overrides = integration_overrides(parse_integrations([{"type": "wandb", "wandb": {"project": "p"}}]))
    assert (
        "run_name" not in overrides
        and integration_env(parse_integrations([{"type": "wandb", "wandb": {"project": "p"}}])) == {}
    )
    assert integration_overrides([]) == {}


@pytest.mark.parametrize(
    ("raw", "param", "says"),
    [
        ([{"type": "mlflow", "mlflow": {}}], "integrations[0].type", "supported: wandb"),
        ([{"wandb": {"project": "p"}}], "integrations[0].type", "supported: wandb"),
        ([{"type": "wandb"}], "integrations[0].wandb", "expected an object"),
        ([{"type": "wandb", "wandb": {}}], "integrations[0].wandb.project", "Missing required"),
        ([{"type": "wandb", "wandb": {"project": ""}}], "integrations[0].wandb.project", "non-empty"),
        ([{"type": "wandb", "wandb": {"project": "p", "team": "x"}}], "integrations[0].wandb.team", "team"),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": "a"}}], "integrations[0].wandb.tags", "list"),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": ["a", 3]}}], "integrations[0].wandb.tags[1]", "string"),
        ([{"type": "wandb", "wandb": {"project": "p"}, "extra": 1}], "integrations[0].extra", "extra"),
        (["wandb"], "integrations[0]", "expected an object"),
        ({"type": "wandb"}, "integrations", "expected a list"),
        ([{"type": "wandb", "wandb": {"project": "p"}}] * 2, "integrations", "at most 1"),
    ],
)
def test_anything_else_is_a_400_naming_the_field(raw, param, says):
    with pytest.raises(APIError) as caught:
        parse_integrations(raw)
    assert caught.value.status == 400
    assert caught.value.param == param
    assert says in caught.value.message
