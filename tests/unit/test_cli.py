"""The `tuneforge` command is a table: every verb from tuneforge/commands/, each method's recipe by name,
the service's verbs only when the service is in the build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge import cli
from tuneforge.commands.train import recipes_by_method
from tuneforge.config import METHODS

ROOT = Path(__file__).resolve().parents[2]
CORE_VERBS = ["train", "generate", "eval", "validate", "preview", "split", "dedup", "compare", "export", "config"]


def verbs(parser) -> list[str]:
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    return list(subparsers.choices)


def test_the_verb_table_is_the_help_order_and_each_entry_adds_one_verb():
    assert verbs(cli.build_parser())[: len(CORE_VERBS)] == CORE_VERBS
    assert len(cli.VERBS) == len(CORE_VERBS)
    for add_verb, name in zip(cli.VERBS, CORE_VERBS, strict=True):
        assert add_verb.__name__ == f"add_{name}_command" and add_verb.__module__.startswith("tuneforge.commands.")


def test_service_verbs_follow_and_vanish_when_the_service_is_not_in_the_build(monkeypatch):
    assert verbs(cli.build_parser())[len(CORE_VERBS):] == ["serve", "worker", "keys"]
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
