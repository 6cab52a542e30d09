"""Running a python grader's `grade(sample, item)` in a separate, resource-limited process with no network.

The child is a fresh interpreter (`python -I`: no PYTHON* variables, no user site) with an empty
environment, started in its own session in a scratch directory. Before it reads the grader's source it
moves itself into new user and network namespaces (unshare(2) through ctypes): the new network namespace
has only a loopback device that is down, so no address, 127.0.0.1 included, can be reached. If unshare
fails the child refuses to run the code and says why; it never runs it with the network. It then caps
CPU seconds, address space, file size and open files and forbids core files (setrlimit), and the parent
kills the whole process group at the wall-clock timeout.

Not contained: the grader can read files the server's user can read. Enable python graders only for
code you would run yourself (TUNEFORGE_PYTHON_GRADERS=1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from tuneforge.errors import UserError

TIMEOUT_SECONDS = 120.0  # OpenAI's limit on one python grader run
MEMORY_BYTES = 2 * 1024**3  # OpenAI gives a python grader 2 GB
FILE_BYTES = 64 * 1024**2
OPEN_FILES = 64
RESULT_BYTES = 1024**2

# Runs in the child as `python -I -c CHILD`; the request arrives on stdin as JSON.
CHILD = r"""
import ctypes, json, os, resource, sys, traceback

result_channel = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # what the grader prints goes to stderr, never into the result
request = json.loads(sys.stdin.read())

def answer(**message):
    result_channel.write(json.dumps(message))
    result_channel.flush()
    os._exit(0)

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0 and libc.unshare(CLONE_NEWNET) != 0:
    answer(refused="cannot isolate the grader from the network (unshare(CLONE_NEWNET) failed: "
           + os.strerror(ctypes.get_errno()) + "); enable unprivileged user namespaces or run the server "
           "with CAP_SYS_ADMIN")
limits = request["limits"]
for name, value in (("RLIMIT_CPU", limits["cpu_seconds"]), ("RLIMIT_AS", limits["memory_bytes"]),
                    ("RLIMIT_FSIZE", limits["file_bytes"]), ("RLIMIT_CORE", 0),
                    ("RLIMIT_NOFILE", limits["open_files"])):
    resource.setrlimit(getattr(resource, name), (value, value))
namespace = {"__name__": "grader"}
try:
    exec(compile(request["source"], "grader.py", "exec"), namespace)
    score = namespace["grade"](request["sample"], request["item"])
    score = float(score)
except BaseException:
    answer(error=traceback.format_exc(limit=-8)[-4000:])
answer(score=score)
"""


class SandboxUnavailable(UserError):
    """This machine cannot run a python grader without network access."""


@dataclass
class PythonOutcome:
    score: float | None  # None when the grader failed: see error
    error: str | None = None
    kind: str | None = None  # "runtime" (the grader's own fault) or "server" (timeout, killed, no result)


def run_python_grader(source: str, sample: dict, item: dict, *, timeout: float = TIMEOUT_SECONDS,
                      memory_bytes: int = MEMORY_BYTES) -> PythonOutcome:
    request = {
        "source": source,
        "sample": sample,
        "item": item,
        "limits": {"cpu_seconds": max(1, int(timeout) + 1), "memory_bytes": memory_bytes,
                   "file_bytes": FILE_BYTES, "open_files": OPEN_FILES},
    }
    with tempfile.TemporaryDirectory(prefix="tuneforge-grader-") as scratch, \
            tempfile.TemporaryFile() as result_file:
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", CHILD], stdin=subprocess.PIPE, stdout=result_file,
            stderr=subprocess.DEVNULL, cwd=scratch, env={}, start_new_session=True,
        )
        try:
            process.stdin.write(json.dumps(request).encode())
            process.stdin.close()
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return PythonOutcome(None, f"the grader ran past its {timeout:g} s limit and was stopped", "server")
        except BrokenPipeError:
            process.wait(timeout=timeout)
        finally:
            _kill_group(process)  # anything it started goes with it
        result_file.seek(0)
        raw = result_file.read(RESULT_BYTES)
    try:
        message = json.loads(raw)
    except ValueError:
        why = f"killed by signal {-process.returncode}" if process.returncode < 0 else f"exit {process.returncode}"
        if process.returncode == -signal.SIGXCPU:
            why = "out of CPU time"
        return PythonOutcome(None, f"the grader process gave no result ({why})", "server")
    if "refused" in message:
        raise SandboxUnavailable(message["refused"])
    if "error" in message:
        return PythonOutcome(None, message["error"], "runtime")
    return PythonOutcome(float(message["score"]))


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
