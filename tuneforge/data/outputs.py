"""Writing a verb's output without ever destroying its input:  tuneforge dedup data.jsonl --output data.jsonl

A verb whose output is one of its inputs either works in place or refuses before it writes anything
(CONVENTIONS, "errors are for people"). `replacing` is the in-place half: everything goes to a temporary
file in the target's folder, which is renamed over the target only once it is complete, so the input is
read whole before it is replaced and a failure leaves it as it was. `refuse_same` is the other half, for
outputs that cannot be the input (two outputs that are one file, an HTML page over the data).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from tuneforge.errors import UserError


def same_file(first: str | Path, second: str | Path) -> bool:
    """Whether two paths name one file: the same path, a symlink to it, a hard link, or an output not written yet."""
    first, second = Path(first), Path(second)
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
    except OSError:
        pass
    return Path(os.path.realpath(first)) == Path(os.path.realpath(second))


def refuse_same(first: str | Path, second: str | Path, why: str) -> None:
    """A usage error (exit 2), raised before anything is written, when the two paths are one file."""
    if same_file(first, second):
        raise UserError(why, path=str(second))


@contextmanager
def replacing(target: str | Path) -> Iterator[BinaryIO]:
    """Write `target` through a temporary file beside it, renamed over it only when the block succeeds."""
    target = Path(os.path.realpath(target))  # through a symlink, the file it names is the one replaced
    if target.is_dir():
        raise UserError("is a folder; give a file name", path=str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, stat.S_IMODE(target.stat().st_mode) if target.exists() else _default_mode())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _default_mode() -> int:
    mask = os.umask(0)  # mkstemp makes 0600; a new output gets what open() would have given it
    os.umask(mask)
    return 0o666 & ~mask
