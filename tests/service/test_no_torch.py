"""The API process and the worker never import torch, transformers or peft (training and inference run
in child processes); checked in a fresh interpreter so nothing else in the test run can mask it."""

import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.service

PROBE = """
import sys, tempfile
from tuneforge.service.app import create_app
from tuneforge.service.settings import Settings
import tuneforge.service.worker, tuneforge.service.commands, tuneforge.service.inference
create_app(Settings.from_env(data_dir=tempfile.mkdtemp()))
heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print(",".join(heavy) or "clean")
"""


def test_service_modules_do_not_import_torch():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "clean"
