"""`config.build_config` is strict and says everything at once; every key is documented; `tuneforge config`."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tuneforge.cli import main
from tuneforge.config import FIELDS, METHODS, TrainConfig, build_config, default_value, describe_keys
from tuneforge.errors import UserError

# What each method needs on top of its defaults to be a valid config.
REQUIRED = {"sft": {}, "dpo": {}, "reward": {}, "grpo": {"reward": "exact_match"}}


def problems_of(*layers) -> list[str]:
    with pytest.raises(UserError) as caught:
        build_config(*layers)
    assert caught.value.code == "bad_config"
    message = str(caught.value)
    assert message.startswith("config: ") and "\n" not in message
    return message.removeprefix("config: ").split("; ")  # no single problem may contain "; "


def test_every_kind_of_problem_is_reported_in_one_error():
    found = problems_of({"data": "x.jsonl", "lora_rank": 8, "batch_size": "many", "epochs": 0},
                        {"beta": 0.5, "group_size": 8})
    assert found[0] == "unknown key 'lora_rank' (did you mean 'lora_r'?)"
    assert "batch_size: expected int, got 'many'" in found
    assert "epochs: must be > 0" in found
    assert "beta: set to 0.5, but method sft does not use it (only dpo does)" in found
    assert "group_size: set to 8, but method sft does not use it (only grpo does)" in found
    assert len(found) == 5


def test_an_unknown_key_without_a_close_match_points_at_the_listing():
    assert problems_of({"data": "x.jsonl", "zzz": 1}) == ["unknown key 'zzz' (`tuneforge config` lists every key)"]


@pytest.mark.parametrize(
    ("method", "key", "value", "users"),
    [
        ("dpo", "replay", "builtin:pydoc", "only sft does"),
        ("grpo", "early_stopping_patience", 3, "only sft does"),
        ("sft", "loss_type", "ipo", "only dpo does"),
        ("reward", "rpo_alpha", 0.0, "only dpo does"),
        ("dpo", "reward_pooling", "last", "only reward does"),
        ("reward", "max_new_tokens", 16, "only grpo does"),
        ("grpo", "max_length", 512, "only sft, dpo and reward do"),
        ("grpo", "gradient_accumulation", 2, "only sft, dpo and reward do"),
        ("reward", "eval_data", "test.jsonl", "only sft, dpo and grpo do"),
        ("reward", "max_forgetting", 5.0, "only sft, dpo and grpo do"),
    ],
)
def test_a_key_the_method_ignores_is_an_error_naming_key_method_and_users(method, key, value, users):
    (problem,) = problems_of({"data": "x.jsonl", "method": method, **REQUIRED[method], key: value})
    assert problem.startswith(f"{key}: set to {value!r}, but method {method} does not use it ({users})"), problem


def test_the_range_of_an_ignored_key_is_not_reported_beside_it():
    """replay_ratio without replay is a range problem for sft; for dpo the key is simply not used."""
    (problem,) = problems_of({"data": "x.jsonl", "method": "dpo", "replay_ratio": 0.5})
    assert problem.startswith("replay_ratio: set to 0.5, but method dpo does not use it")


@pytest.mark.parametrize("method", METHODS)
def test_defaults_are_never_an_error_and_a_saved_config_rebuilds(method):
    """A saved train_config.json holds every key; its defaults must not read as choices."""
    every_key = TrainConfig(data="x.jsonl", method=method, **REQUIRED[method]).to_dict()
    assert build_config(every_key) == TrainConfig(**every_key)
    # Every other key written out at its default, as a shared YAML file might.
    explicit_defaults = {name: default_value(name) for name in FIELDS if name not in ("data", "method", "reward")}
    build_config({"data": "x.jsonl", "method": method, **REQUIRED[method]}, explicit_defaults)
    # A run's config, saved and rebuilt with one change (how the recipe tests drive resume).
    first = build_config({"data": "x.jsonl", "method": method, **REQUIRED[method]})
    assert build_config({**first.to_dict(), "resume": "auto"}).resume == "auto"


def test_every_method_key_is_used_by_some_method_and_methods_are_known():
    for name, f in FIELDS.items():
        assert f.metadata["methods"] and set(f.metadata["methods"]) <= set(METHODS), name


def test_every_key_has_a_one_line_description():
    for f in dataclasses.fields(TrainConfig):
        doc = f.metadata.get("doc", "")
        assert doc.strip() and "\n" not in doc and len(doc) <= 160, f.name
        assert "; " not in f.metadata["why_not"], f"{f.name}: '; ' separates the problems of one error"


def test_describe_keys_lists_every_key_or_those_of_one_method():
    every = describe_keys()
    assert [k["key"] for k in every] == list(FIELDS)
    dpo = {k["key"] for k in describe_keys("dpo")}
    assert {"beta", "loss_type", "rpo_alpha", "data", "max_length"} <= dpo
    assert not dpo & {"replay", "reward_pooling", "group_size", "early_stopping_patience"}
    lora = next(k for k in every if k["key"] == "lora_target_modules")
    assert lora == {"key": "lora_target_modules", "type": "list[str]", "default": ["all-linear"],
                    "methods": list(METHODS), "description": FIELDS["lora_target_modules"].metadata["doc"]}


def test_config_verb_json_is_one_object_with_every_key(capsys):
    assert main(["config", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] is None and out["keys"] == json.loads(json.dumps(describe_keys()))


def test_config_verb_text_is_a_line_per_key_with_type_default_methods_description(capsys):
    assert main(["config", "--method", "dpo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["key", "type", "default", "methods", "description"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {k["key"] for k in describe_keys("dpo")}
    assert rows["beta"].split()[:4] == ["beta", "float", "0.1", "dpo"]
    assert rows["beta"].endswith(FIELDS["beta"].metadata["doc"])
    assert rows["max_length"].split()[:6] == ["max_length", "int", "2048", "sft,", "dpo,", "reward"]
    assert rows["validation_data"].split()[:6] == ["validation_data", "str", "|", "None", "null", "all"]


def test_train_help_points_at_the_config_verb(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "tuneforge config [--method M]" in capsys.readouterr().out
