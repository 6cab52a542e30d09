"""Layers point one way: data/ never imports the model runner, a recipe, evaluation or the verbs; the modules
the service imports from the trainer (config, data.validate) never import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ABOVE_DATA = ("tuneforge.recipes", "tuneforge.evaluate", "tuneforge.trainable", "tuneforge.estimate",
              "tuneforge.generation", "tuneforge.commands", "tuneforge.cli", "tuneforge.service")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_data_imports_nothing_above_it():
    upward = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "tuneforge" / "data").glob("*.py"))
        for name in imported_modules(path)
        if name.startswith(ABOVE_DATA)
    }
    assert upward == set()


def test_config_and_validate_import_without_torch():
    probe = "import sys, tuneforge.config, tuneforge.data.validate; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def test_recipes_import_the_run_shell_but_never_each_other():
    recipes = ROOT / "tuneforge" / "recipes"
    methods = {path.stem for path in recipes.glob("*.py")} - {"__init__", "run"}
    assert methods == {"sft", "dpo", "reward", "grpo"}
    crossing = {
        f"{path.name} imports {name}"
        for path in sorted(recipes.glob("*.py"))
        for name in imported_modules(path)
        if any(name.startswith(f"tuneforge.recipes.{method}") for method in methods - {path.stem})
    }
    assert crossing == set()
    for method in methods:  # every loop goes through the one shell
        assert "tuneforge.recipes.run" in imported_modules(recipes / f"{method}.py"), method
