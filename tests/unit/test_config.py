"""`config.build_config` is strict and says everything at once; every key is documented; other tools' names
for keys (aliases); the shipped example configs load; `tuneforge config`."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tuneforge.cli import main
from tuneforge.config import (
    ALIASES,
    EXAMPLES,
    FIELDS,
    METHODS,
    TrainConfig,
    build_config,
    default_value,
    describe_keys,
    example_config,
    load_yaml,
)
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
    found = problems_of({"data": "x.jsonl", "lora_rnk": 8, "batch_size": "many", "epochs": 0},
                        {"beta": 0.5, "group_size": 8})
    assert found[0] == "unknown key 'lora_rnk' (did you mean 'lora_rank'?)"
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
                    "methods": list(METHODS), "description": FIELDS["lora_target_modules"].metadata["doc"],
                    "aliases": ["lora_target"]}


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
    assert rows["beta"].endswith(FIELDS["beta"].metadata["doc"] + " [also: pref_beta]")
    assert rows["loss_type"].endswith(FIELDS["loss_type"].metadata["doc"] + " [also: pref_loss]")
    assert rows["max_length"].split()[:6] == ["max_length", "int", "2048", "sft,", "dpo,", "reward"]
    assert rows["validation_data"].split()[:6] == ["validation_data", "str", "|", "None", "null", "all"]


def test_train_help_points_at_the_config_verb(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "tuneforge config [--method M]" in capsys.readouterr().out


def test_type_and_range_problems_come_together_and_a_mistyped_key_is_reported_once():
    """The range checks run on every key that did coerce; a key whose value had the wrong type is not
    also blamed for the default that stood in for it (data: required), nor in a rule between keys."""
    found = problems_of({"data": ["a.jsonl"], "epochs": 0, "lora_r": "x", "lora_dropout": 1.5})
    assert found == ["data: expected str, got ['a.jsonl']", "lora_r: expected int, got 'x'", "epochs: must be > 0",
                     "lora_dropout: must be in [0, 1)"]
    assert problems_of({"data": "x.jsonl", "method": "grpo", "reward": ["a"], "group_size": 1}) == [
        "reward: expected str, got ['a']", "group_size: must be >= 2 (advantages compare completions within a group)"]


def test_aliases_are_the_names_other_tools_use_and_mean_their_key():
    for alias, key in ALIASES.items():
        assert key in FIELDS and alias not in FIELDS, alias
    config = build_config({"data": "x.jsonl", "num_train_epochs": 2, "per_device_train_batch_size": 2,
                           "gradient_accumulation_steps": 4, "output_dir": "runs/a", "model_name_or_path": "m",
                           "lr": "1e-4", "cutoff_len": 512, "lora_target": "q_proj,v_proj", "val_set_size": 0.1,
                           "lr_scheduler_type": "linear", "logging_steps": 5})
    assert (config.epochs, config.batch_size, config.gradient_accumulation, config.output, config.model) == (
        2.0, 2, 4, "runs/a", "m")
    assert (config.learning_rate, config.max_length, config.lora_target_modules, config.validation_split) == (
        1e-4, 512, ["q_proj", "v_proj"], 0.1)
    assert (config.lr_schedule, config.log_every) == ("linear", 5)
    assert "num_train_epochs" not in config.to_dict()  # train_config.json is written with the keys
    dpo = build_config({"data": "x.jsonl", "method": "dpo", "pref_beta": 0.3, "pref_loss": "ipo"})
    assert (dpo.beta, dpo.loss_type) == (0.3, "ipo")
    grpo = build_config({"data": "x.jsonl", "method": "grpo", "reward": "exact_match", "num_generations": 8,
                         "max_completion_length": 32})
    assert (grpo.group_size, grpo.max_new_tokens) == (8, 32)


def test_a_key_set_twice_in_one_layer_is_an_error_and_a_later_layer_wins_as_always():
    assert problems_of({"data": "x.jsonl", "num_train_epochs": 0, "epochs": 2}) == [
        "num_train_epochs and epochs both set: they are one key (epochs), keep one"]
    assert problems_of({"data": "x.jsonl", "num_epochs": 1, "num_train_epochs": 2}) == [
        "num_epochs and num_train_epochs both set: they are one key (epochs), keep one"]
    assert build_config({"data": "x.jsonl", "num_train_epochs": 2}, {"epochs": 5}).epochs == 5
    assert build_config({"data": "x.jsonl", "epochs": 2}, {"num_train_epochs": 5}).epochs == 5


def test_a_problem_of_a_key_set_under_an_alias_names_the_alias():
    assert problems_of({"data": "x.jsonl", "num_train_epochs": 0, "lr": "fast", "method": "dpo",
                        "max_completion_length": 16}) == [
        "lr (learning_rate): expected float, got 'fast'", "num_train_epochs (epochs): must be > 0",
        "max_completion_length (max_new_tokens): set to 16, but method dpo does not use it (only grpo does)"]
    assert problems_of({"data": "x.jsonl", "lora_target": "all"}) == [
        "lora_target (lora_target_modules): 'all' is spelled all-linear here (every linear layer but the output head)"]


def test_an_unknown_key_may_be_close_to_an_alias():
    assert problems_of({"data": "x.jsonl", "num_train_epoch": 2}) == [
        "unknown key 'num_train_epoch' (did you mean 'num_train_epochs'?)"]


@pytest.mark.parametrize(("value", "expected"), [
    ("none", []), (None, []), ([], []), ("tensorboard", ["tensorboard"]), ("mlflow, wandb", ["mlflow", "wandb"]),
    (["trackio", "tensorboard"], ["trackio", "tensorboard"]),
])  # fmt: skip
def test_report_to_is_a_list_of_trackers_and_none_is_empty(value, expected):
    assert build_config({"data": "x.jsonl", "report_to": value}).report_to == expected


def test_report_to_names_the_trackers_it_knows():
    assert problems_of({"data": "x.jsonl", "report_to": "tensorboard,neptune,all"}) == [
        "report_to: expected tensorboard, mlflow, trackio or wandb (or none), got neptune, all"]


@pytest.mark.parametrize("method", METHODS)
def test_every_shipped_example_config_loads_and_is_its_methods(method):
    path = example_config(method)
    assert path.parent == EXAMPLES and path.name == f"{method}.yaml"
    layer = load_yaml(path)
    assert not set(layer) & set(ALIASES), "examples teach the keys themselves"
    config = build_config(layer)
    assert config.method == method and config.data
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(f"{m}.yaml" for m in METHODS)


def test_config_verb_prints_an_example_to_start_a_file_from(capsys, tmp_path):
    assert main(["config", "--example", "dpo"]) == 0
    text = capsys.readouterr().out
    assert text == example_config("dpo").read_text() and text.startswith("# ")
    (tmp_path / "mine.yaml").write_text(text)
    assert build_config(load_yaml(tmp_path / "mine.yaml")).loss_type == "sigmoid"
    with pytest.raises(SystemExit):
        main(["config", "--example", "ppo"])
    assert "invalid choice: 'ppo'" in capsys.readouterr().err


def test_config_verb_json_lists_each_keys_aliases(capsys):
    assert main(["config", "--json"]) == 0
    keys = {k["key"]: k for k in json.loads(capsys.readouterr().out)["keys"]}
    assert keys["epochs"]["aliases"] == ["num_train_epochs", "num_epochs"]
    assert set(keys["learning_rate"]["aliases"]) == {"lr"}
    assert sorted(alias for k in keys.values() for alias in k["aliases"]) == sorted(ALIASES)


def test_lora_rank_is_llama_factorys_name_for_lora_r():
    assert build_config({"data": "x.jsonl", "lora_rank": 8}).lora_r == 8
