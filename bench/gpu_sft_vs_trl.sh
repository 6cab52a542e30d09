#!/usr/bin/env bash
# The GPU variant of bench/sft_vs_trl.py: tuneforge vs TRL + PEFT on one GPU in under 8 minutes: the embedded
# model's architecture (SmolLM2-135M), then an 8B-class Llama with LoRA bf16, QLoRA and packing on/off.
#
#   bash bench/gpu_sft_vs_trl.sh prepare   # here, with PyPI: wheels the GPU image lacks -> .whl/,
#                                          # the embedded model's config + tokenizer -> .gpu-model/
#   bash bench/gpu_sft_vs_trl.sh run       # there (no network; carry .whl and .gpu-model)
#
# The GPU image has torch, transformers, peft and accelerate; TRL, datasets and their two small
# dependencies travel as wheels. The embedded model's weights (a ~90 MB GGUF inside a wheel) cannot
# travel within the 64 MiB limit, so the run draws weights for the same architecture and tokenizer:
# FLOPs, speed and memory are the real model's, the losses are not the demo's (both tools see the same
# weights). 400 demo tickets x 1 epoch, LoRA r=16 all-linear, batch 8, as on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
prepare)
    python=${PYTHON:-.venv/bin/python}
    mkdir -p .whl .gpu-model
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0
    "$python" - <<'PY'
import shutil
from pathlib import Path

from tuneforge.models import resolve_model

source = resolve_model("smollm2-135m-instruct").path
for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    if (source / name).exists():
        shutil.copy(source / name, Path(".gpu-model") / name)
print("prepared .whl/ and .gpu-model/ (carry both)")
PY
    ;;
run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD TOKENIZERS_PARALLELISM=false
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 bench/sft_vs_trl.py --device cuda --model .gpu-model --random-weights --examples 400 --epochs 1 \
        --variants tuneforge,trl,trl-bf16,trl-packing,tuneforge-full --json
    # An 8B-class Llama (Llama 3 8B's shape, SmolLM2's 49k vocabulary: ~7.2B parameters) drawn in bf16 on the
    # GPU: LoRA bf16 and QLoRA (NF4) for both tools, packing on and off; TRL's base loaded in bf16 too. 64
    # tickets = 8 steps per variant, most of each variant's time is loading the 15 GB base.
    variants=tuneforge-padded,tuneforge-packed,trl-bf16,trl-packing
    if python3 -c "import bitsandbytes" 2>/dev/null; then variants="$variants,tuneforge-qlora,trl-qlora"
    else echo "bitsandbytes is not installed on this machine: no QLoRA variants" >&2; fi
    [ "${SKIP_8B:-0}" = 1 ] || python3 bench/sft_vs_trl.py --device cuda --model .gpu-model --random-weights \
        --shape llama-8b --trl-weights bfloat16 --examples 64 --epochs 1 --variants "$variants" --json
    ;;
*)
    echo "usage: bash bench/gpu_sft_vs_trl.sh prepare|run" >&2
    exit 2
    ;;
esac
