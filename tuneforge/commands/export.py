"""The `tuneforge export` verb:  tuneforge export --adapter runs/demo --format gguf --dtype q8_0 --output exported/demo

Formats: `hf` (merged safetensors folder), `gguf` (OUTPUT/model.gguf, or OUTPUT itself when it ends in
.gguf) and `ollama` (OUTPUT/model.gguf + OUTPUT/Modelfile). Prints one JSON line naming the files written.
"""

from __future__ import annotations

import json

from tuneforge.export import DTYPES, FORMATS


def add_export_command(subparsers) -> None:
    p = subparsers.add_parser("export", help="merge an adapter and write an HF folder, a GGUF file or an Ollama model")
    p.add_argument("--adapter", help="LoRA adapter dir or full fine-tuned model dir (omit to export --model as is)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="hf: merged safetensors folder; gguf: one GGUF file; ollama: GGUF + Modelfile")
    p.add_argument("--dtype", choices=DTYPES,
                   help="tensor type (default f32 for hf, f16 for gguf, q8_0 for ollama; q8_0 and the K-quants "
                        "q4_k_m, q5_k_m, q6_k are GGUF-only, the K-quants through llama.cpp's quantizer, which "
                        "needs llama-cpp-python: scripts/install_llama_cpp.sh)")
    p.add_argument("--output", required=True, help="output folder (or a .gguf path for --format gguf)")
    p.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from tuneforge.export import export

    files = export(args.adapter, args.format, args.output, dtype=args.dtype, model=args.model)
    print(json.dumps({"format": args.format, "files": [str(f) for f in files]}))
    return 0
