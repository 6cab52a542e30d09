"""The `tuneforge` command is a table: every verb from tuneforge/commands/, each method's recipe by name,
the service's verbs only when the service is in the build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge import cli
from tuneforge.commands.train import recipes_by_method
from tuneforge.config import METHODS

ROOT = Path(__file__).resolve().parents[2]
CORE_VERBS = ["train", "generate", "eval", "validate", "advise", "preview", "split", "dedup", "convert", "compare",
              "export", "config"]


def verbs(parser) -> list[str]:
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    return list(subparsers.choices)


def test_the_verb_table_is_the_help_order_and_each_entry_adds_one_verb():
    assert verbs(cli.build_parser())[: len(CORE_VERBS)] == CORE_VERBS
    assert len(cli.VERBS) == len(CORE_VERBS)
    for add_verb, name in zip(cli.VERBS, CORE_VERBS, strict=True):
        assert add_verb.__name__ == f"add_{name}_command" and add_verb.__module__.startswith("tuneforge.commands.")


def test_service_verbs_follow_and_vanish_when_the_service_is_not_in_the_build(monkeypatch):
    assert verbs(cli.build_parser())[len(CORE_VERBS):] == ["serve", "worker", "keys", "orgs"]
    monkeypatch.setitem(sys.modules, "tuneforge.service.commands", None)  # import raises ModuleNotFoundError
    assert verbs(cli.build_parser()) == CORE_VERBS


def test_every_method_has_its_recipe_train_function():
    table = recipes_by_method()
    assert list(table) == list(METHODS)
    for method, train in table.items():
        assert train.__module__ == f"tuneforge.recipes.{method}" and train.__name__ == "train"


def test_no_verb_or_recipe_is_found_by_a_name_built_at_run_time():
    for path in [ROOT / "tuneforge" / "cli.py", *(ROOT / "tuneforge" / "commands").glob("*.py")]:
        assert "import_module" not in path.read_text(), path


def test_python_dash_m_tuneforge_is_the_command():
    done = subprocess.run([sys.executable, "-m", "tuneforge", "config", "--method", "reward"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "reward_pooling" in done.stdout and "replay " not in done.stdout


@pytest.mark.parametrize("argv", [[], ["--help"]])
def test_help_does_not_import_torch(argv):
    probe = f"import sys\nfrom tuneforge.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n" \
            "print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr


def test_version_is_the_packages(capsys):
    from tuneforge import __version__

    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"tuneforge {__version__}"


@pytest.fixture
def trained(monkeypatch):
    """`tuneforge train` up to the recipe: the configs each run would train with (no model, no data)."""
    from tuneforge.commands import train

    seen = []
    monkeypatch.setattr(train, "check_training_files", lambda config: None)
    monkeypatch.setattr(train, "recipes_by_method", lambda: {
        method: lambda config: seen.append(config) or {"status": "completed"} for method in METHODS})
    return seen


def test_key_value_overrides_may_stand_anywhere_on_the_train_line(trained):
    """argparse keeps only the first run of positionals; the rest come back unparsed and are overrides too."""
    assert cli.main(["train", "--data", "x.jsonl", "lora_r=8", "--method", "dpo", "beta=0.2", "--seed", "3",
                     "max_length=512"]) == 0
    (config,) = trained
    assert (config.lora_r, config.method, config.beta, config.seed, config.max_length) == (8, "dpo", 0.2, 3, 512)


def test_a_config_file_is_the_first_positional_and_flags_then_overrides_win_over_it(trained, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: a.jsonl\nlora_r: 4\nepochs: 2\nnum_train_epochs_note: x\n".replace(
        "num_train_epochs_note: x\n", "gradient_accumulation_steps: 2\n"))
    assert cli.main(["train", str(path), "lora_r=8", "--epochs", "3", "epochs=5"]) == 0
    assert cli.main(["train", "--seed", "1", str(path), "lora_alpha=8"]) == 0  # after a flag too
    assert cli.main(["train", "--config", str(path)]) == 0  # the flag of old
    first, second, third = trained
    assert (first.data, first.lora_r, first.epochs, first.gradient_accumulation) == ("a.jsonl", 8, 3.0, 2)
    assert (second.seed, second.lora_alpha, second.lora_r) == (1, 8.0, 4)
    assert third == build_config_of(path)


def build_config_of(path):
    from tuneforge.config import build_config, load_yaml

    return build_config(load_yaml(path))


def test_a_runs_train_config_json_is_a_config_file_too(trained, tmp_path):
    from tuneforge.config import build_config

    saved = build_config({"data": "a.jsonl", "method": "dpo", "beta": 0.3, "output": str(tmp_path / "a")})
    (tmp_path / "train_config.json").write_text(json.dumps(saved.to_dict()))
    assert cli.main(["train", str(tmp_path / "train_config.json"), "--output", str(tmp_path / "b")]) == 0
    (config,) = trained
    assert config.beta == 0.3 and config.method == "dpo" and config.output == str(tmp_path / "b")


def test_validation_flags_answer_to_the_spellings_of_validate_and_split(trained):
    assert cli.main(["train", "--data", "x.jsonl", "--validation-file", "v.jsonl"]) == 0
    assert cli.main(["train", "--data", "x.jsonl", "--validation-fraction", "0.2"]) == 0
    assert cli.main(["train", "--data", "x.jsonl", "--validation-data", "w.jsonl", "--validation-split", "0.3"]) == 0
    first, second, third = trained
    assert first.validation_data == "v.jsonl" and second.validation_split == 0.2
    assert (third.validation_data, third.validation_split) == ("w.jsonl", 0.3)


@pytest.mark.parametrize("verb", ["train", "generate", "eval", "compare", "config"])
def test_help_says_what_every_option_means_and_its_default(verb):
    """Flags that are off unless given say what they do; every other option also names its default."""
    import argparse

    parser = cli.verb_parsers(cli.build_parser())[verb]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 10, (verb, action.dest)
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction))
        if action.option_strings and not switch and not action.required:
            assert "default" in action.help, (verb, action.dest, action.help)
    assert "%(default)s" not in parser.format_help() and "default: None" not in parser.format_help()


def test_train_help_shows_the_config_keys_defaults():
    text = " ".join(cli.verb_parsers(cli.build_parser())["train"].format_help().split())
    assert "--epochs EPOCHS passes over the training data (fractions allowed) (default: 3.0)" in text
    assert "--validation-data VALIDATION_DATA, --validation-file VALIDATION_DATA" in text
    assert "(default: smollm2-135m-instruct)" in text and "rises more than this % (default: none)" in text


def test_train_takes_columns_and_chat_template_as_flags_like_validate_does():
    from tuneforge.commands.train import train_config_from_args

    args = cli.build_parser().parse_args(["train", "--data", "qa.csv", "--columns", "prompt:question,completion:answer",
                                          "--chat-template", "plain"])
    config = train_config_from_args(args)
    assert config.columns == {"prompt": "question", "completion": "answer"} and config.chat_template == "plain"
