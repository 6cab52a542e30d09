"""Produce clean files:  tuneforge split FILE --validation-fraction 0.1 --seed 42 --train-out A --validation-out B
                         tuneforge dedup FILE --output OUT [--near]

Lines of a JSONL file are copied byte for byte (no re-serialisation), so a split or dedup never changes an
example; another container (CSV, Parquet, ...) is refused, naming `tuneforge convert`. Outputs are
written through `outputs.replacing`, so an output may be the input (dedup in place, split with
--train-out FILE); two outputs that are one file are refused before anything is written.
The duplicate keys defined here are the ones `tuneforge validate` warns about, so a file written by
`dedup` (or `dedup --near`) validates without duplicate (or near-duplicate) warnings.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import unicodedata
from pathlib import Path
from typing import Any

from tuneforge.data.outputs import refuse_same, replacing
from tuneforge.data.readers import CONTAINERS, detect_container
from tuneforge.errors import UserError

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def exact_key(row: Any) -> int:
    """Same example: equal JSON after sorting keys (whitespace and key order in the file do not matter)."""
    return _digest(json.dumps(row, sort_keys=True, ensure_ascii=False))


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in sorted(value):
            if key != "weight":
                yield from _strings(value[key])
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def normalised_text(row: Any) -> str:
    """The row's words only: case, accents' compatibility forms, punctuation and spacing are ignored."""
    text = " ".join(_strings(row))
    text = unicodedata.normalize("NFKC", text).casefold()
    return _NOT_WORD.sub(" ", text).strip()


def near_key(row: Any) -> int:
    """Near-duplicate: the same words in the same order, ignoring case, punctuation and whitespace."""
    return _digest(normalised_text(row))


def split_validation(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train/validation split by seed (the same seed always holds out the same rows).

    Used by `train --validation-split` for every method and by `tuneforge split`, so both hold out the same rows.
    """
    if fraction <= 0:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, math.ceil(len(items) * fraction))
    held_out = set(order[:n_valid])
    train = [item for i, item in enumerate(items) if i not in held_out]
    valid = [item for i, item in enumerate(items) if i in held_out]
    return train, valid


def require_jsonl(path: str | Path, verb: str) -> Path:
    """The path of a JSONL file, else a usage error that says what it is and how to get JSONL."""
    path = Path(path)
    if not path.exists():
        raise UserError("file not found", path=str(path))
    container = "datasets" if path.is_dir() else detect_container(path)[0]
    if container != "jsonl":
        raise UserError(f"this is {CONTAINERS[container]}; {verb} copies JSONL lines byte for byte: convert it "
                        f"first (tuneforge convert {path} {path.with_suffix('.jsonl')})", path=str(path))
    return path


def _read_lines(path: Path) -> list[bytes]:
    with path.open("rb") as handle:
        lines = [line if line.endswith(b"\n") else line + b"\n" for line in handle if line.strip()]
    if lines:  # a byte-order mark belongs to the file's start, not to the example that happens to be first
        lines[0] = lines[0].removeprefix(b"\xef\xbb\xbf")
    return lines


def split_file(path, validation_fraction: float, seed: int, train_out, validation_out) -> tuple[int, int]:
    """Deterministic by seed, with the same rule `train --validation-split` uses (`split_validation`)."""
    if not 0 < validation_fraction < 1:
        raise UserError(f"--validation-fraction must be between 0 and 1, got {validation_fraction}")
    refuse_same(train_out, validation_out, "--train-out and --validation-out are the same file: give two names")
    lines = _read_lines(require_jsonl(path, "split"))
    if len(lines) < 2:
        raise UserError("need at least 2 examples to split", path=str(path))
    train, valid = split_validation(lines, validation_fraction, seed)
    # The whole input is in memory: either output may be the input, each renamed into place when complete.
    with replacing(train_out) as train_writer, replacing(validation_out) as valid_writer:
        train_writer.write(b"".join(train))
        valid_writer.write(b"".join(valid))
    return len(train), len(valid)


def dedup_file(path, output, near: bool = False) -> dict:
    """Keep the first occurrence of each example; unparseable lines are kept (validate reports them)."""
    source = require_jsonl(path, "dedup")
    key_of = near_key if near else exact_key
    seen: set[int] = set()
    kept = dropped = 0
    with source.open("rb") as reader, replacing(output) as writer:  # --output may be the input
        for raw in reader:
            if not raw.strip():
                continue
            try:
                key = key_of(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                key = None
            if key is not None and key in seen:
                dropped += 1
                continue
            if key is not None:
                seen.add(key)
            writer.write(raw if raw.endswith(b"\n") else raw + b"\n")
            kept += 1
    return {"kept": kept, "dropped": dropped, "output": str(output), "near": near}
