"""python bench/multi_lora_memory.py [--adapters 8]: resident memory of serving N LoRA adapters of the
embedded model from one base (tuneforge.serving.Engine) versus N merged copies (what the inference process
did before: load_model(base, adapter) per adapter).

Each set-up runs in a fresh interpreter (RSS is only comparable from a clean start) and answers one short
greedy request per adapter, so the adapters are really loaded and used. Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MAKE_ADAPTERS = """
import sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from tuneforge.models import DEFAULT_MODEL, resolve_model
folder, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    base = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL).path)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    model.save_pretrained(f"{folder}/adapter{i}")
"""

MEASURE = """
import json, resource, sys, threading, time
from pathlib import Path

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

mode, folder, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
import torch
from tuneforge.generation import generate_chat
from tuneforge.models import DEFAULT_MODEL, load_model
before = rss_mb()
messages = [{"role": "user", "content": "Say hello."}]
adapters = [f"{folder}/adapter{i}" for i in range(count)]
start = time.perf_counter()
if mode == "engine":
    from tuneforge.serving import Engine, GenerationRequest
    engine, done, answers = Engine(), threading.Event(), []
    def emit(message):
        if "result" in message or "error" in message:
            answers.append(message)
            if len(answers) == count:
                done.set()
    for i, adapter in enumerate(adapters):
        engine.submit(GenerationRequest(id=str(i), model=DEFAULT_MODEL, adapter=adapter, messages=messages,
                                        max_new_tokens=8), emit)
    done.wait()
    assert all("result" in a for a in answers), answers
else:
    # "merged": one merged copy per adapter; "base": the base alone, the floor both are measured against.
    models = [load_model(DEFAULT_MODEL, adapter) for adapter in adapters] if mode == "merged" else [load_model()]
    for model, tokenizer in models:
        generate_chat(model, tokenizer, [messages], max_new_tokens=8)
seconds = time.perf_counter() - start
dtype = str(next(iter(engine._bases.values())).dtype if mode == "engine" else models[0][0].dtype)
print(json.dumps({"mode": mode, "rss_mb": rss_mb(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_mb": before, "seconds": seconds, "dtype": dtype}))
"""


def run(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run(MAKE_ADAPTERS, folder, str(args.adapters))
        adapter_mb = sum(f.stat().st_size for f in Path(folder).rglob("adapter_model.safetensors")) / 2**20
        print(json.dumps({"adapters": args.adapters, "adapter_files_mb": round(adapter_mb, 1)}))
        for mode in ("base", "engine", "merged"):
            print(run(MEASURE, mode, folder, str(args.adapters)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
