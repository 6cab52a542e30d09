"""Reading a run folder without torch: which checkpoints are complete, and trimming metrics.jsonl on resume.

Used by the trainer (`--resume auto`) and by the service's worker (which never imports torch), so both
agree on the resume point: the newest `checkpoints/step-N/` that has its `manifest.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "manifest.json"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (manifest written last), oldest first; staging and half-written folders are skipped."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.name.startswith("step-") and p.name[5:].isdigit() and (p / MANIFEST).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[5:]))


def trim_metrics(path: Path, last_step: int) -> list[dict]:
    """Drop metrics.jsonl records after `last_step` (written by a run that died before its next checkpoint),
    so a resumed run's log reads as if it had never stopped. Atomic; a torn last line is dropped too.
    Returns the records kept (a resumed run rebuilds its curves from them)."""
    path = Path(path)
    if not path.exists():
        return []
    kept, records = [], []
    for line in path.read_bytes().split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and step <= last_step:
            kept.append(line + b"\n")
            records.append(record)
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("wb") as handle:
        handle.write(b"".join(kept))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    return records
