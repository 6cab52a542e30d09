"""The API process and the worker never import torch, transformers or peft (training and inference run
in child processes), and the worker never imports an HTTP route; checked in a fresh interpreter so nothing
else in the test run can mask it."""

import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.service

TORCH_PROBE = """
import sys, tempfile
from tuneforge.service.app import create_app
from tuneforge.service.settings import Settings
import tuneforge.service.worker, tuneforge.service.commands, tuneforge.service.inference
create_app(Settings.from_env(data_dir=tempfile.mkdtemp()))
heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print(",".join(heavy) or "clean")
"""

WORKER_PROBE = """
import sys
import tuneforge.service.worker
web = sorted(m for m in sys.modules if m.startswith(("tuneforge.service.routes", "fastapi", "starlette")))
print(",".join(web) or "clean")
"""


def probe(code: str) -> str:
    """The last line `code` prints in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_service_modules_do_not_import_torch():
    assert probe(TORCH_PROBE) == "clean"


def test_the_worker_imports_no_http_route_and_no_web_framework():
    """Layers point one way: routes and the worker share the store and file_storage, never each other."""
    assert probe(WORKER_PROBE) == "clean"
