"""QLoRA on the real embedded model (SmolLM2-135M-Instruct): `tuneforge train quantize=4bit` trains two steps
on a 4-bit NF4 base on the CPU, writes a plain PEFT adapter, and the merge of it loads as an ordinary model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "support_tickets" / "train.jsonl"


def test_qlora_4bit_trains_the_embedded_model(tmp_path):
    pytest.importorskip("bitsandbytes")
    output = tmp_path / "qlora"
    done = subprocess.run(
        [sys.executable, "-m", "tuneforge", "train", "--data", str(DATA), "--output", str(output), "--max-steps", "2",
         "--batch-size", "4", "quantize=4bit", "forgetting_guard=off"],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert json.loads((output / "train_config.json").read_text())["quantize"] == "4bit"
    adapter = load_file(str(output / "adapter_model.safetensors"))
    assert adapter and all("lora_" in key for key in adapter)

    from tuneforge.export.merge import merged_model

    merged, _ = merged_model(str(output))
    assert not any("bitsandbytes" in type(module).__module__ for module in merged.modules())
