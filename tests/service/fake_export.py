"""A stand-in for `tuneforge export --adapter RUN --format gguf|hf --output OUT`: writes what the real verb
writes (OUT as one GGUF file, or OUT/ as a merged model folder) from the adapter's files, in milliseconds.
Knobs (environment): FAKE_EXPORT_LOG (append "FORMAT ADAPTER" per run, to prove results are cached),
FAKE_EXPORT_REFUSE (exit 2 with that one-line message, as the verb refuses an unsupported model)."""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--adapter", required=True)
parser.add_argument("--format", required=True, choices=("hf", "gguf", "ollama"))
parser.add_argument("--output", required=True)
parser.add_argument("--dtype")
args = parser.parse_args()

if os.environ.get("FAKE_EXPORT_LOG"):
    with open(os.environ["FAKE_EXPORT_LOG"], "a") as log:
        log.write(f"{args.format} {args.adapter}\n")
if os.environ.get("FAKE_EXPORT_REFUSE"):
    print(f"tuneforge: error: {os.environ['FAKE_EXPORT_REFUSE']}", file=sys.stderr)
    sys.exit(2)
adapter = Path(args.adapter)
config = json.loads((adapter / "adapter_config.json").read_text())
digest = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
output = Path(args.output)
if args.format == "gguf":
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(b"GGUF" + json.dumps({"adapter": config, "sha256": digest}).encode())
    files = [output]
else:
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.json").write_text(json.dumps({"merged_from": config}))
    (output / "model.safetensors").write_bytes(digest.encode())
    files = [output / "config.json", output / "model.safetensors"]
print(json.dumps({"format": args.format, "files": [str(f) for f in files]}))
