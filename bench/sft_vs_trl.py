"""tuneforge vs TRL + PEFT, side by side, one run:  python bench/sft_vs_trl.py [--examples 96]

Same model (the embedded SmolLM2-135M-Instruct), same chat examples (the demo's ticket -> JSON task),
same LoRA (r=16, alpha=32, dropout 0, all linear layers), same batch (8), lr, schedule and epochs.
Loss is comparable: TRL gets the data as conversational prompt/completion pairs, so it trains on the
completion (answer + end-of-turn) only, like tuneforge.

Each variant runs in its own process so peak RSS is its own. Printed per variant: tokens/s (all
non-padding tokens of the examples, per second of training loop), peak RSS, final training loss (mean
of the last 10% of steps), MFU, and the speed ratio to TRL's default.

Variants: `tuneforge` is the like-for-like one (forgetting guard off, since TRL has none; LoRA through the
fused Linear, the default); `tuneforge-guard` is `tuneforge train`'s defaults (the guard's extra passes on
general prompts are work TRL does not do, so its tokens/s counts only the task's tokens);
`tuneforge-unfused` runs PEFT's own LoRA forward (`fused_lora=false`); `tuneforge-compile` adds
`compile=true`; `tuneforge-full` is full fine-tuning.

MFU is by the FLOPs each tool actually executes, against the matmul peak measured in this same run for
the dtype the variant computes in. Per non-padding token: the decoder's Linears forward and the input
gradient backward (4 x their weights; 6 x when they train), 6 x the LoRA weights, attention (6 x layers x
mean length x width for causal forward and backward); plus the output head (4 x vocabulary x width, 6 x
when it trains) at every position for TRL, which computes logits everywhere, but only at the trained
(completion) positions for tuneforge, whose fused loss never computes the others. Padding, dtype copies
and elementwise work count as no FLOPs: they are the overhead MFU exposes.

TRL 1.16's `SFTConfig` turns gradient checkpointing on by default; `trl` and `trl-bf16` keep that default (what
a TRL user gets), `trl-bf16-no-gc` turns it off (what TRL costs without the recompute). QLoRA: `tuneforge-qlora`
(`quantize=4bit`) and `trl-qlora` (bitsandbytes NF4, double quantisation, bf16 compute), both on a 4-bit base.
Packing: `tuneforge-packed` / `tuneforge-padded` force `packing=on` / `off` (`tuneforge` itself lets
`packing=auto` choose), `trl-packing` is TRL's `packing=True`.

TRL is a dev-only dependency: pip install trl==1.16.0 datasets.

On a GPU (`--device cuda`, see bench/gpu_sft_vs_trl.sh) both tools train on the GPU, tuneforge in bf16
(its default there), TRL by default in fp32 and with `bf16=True` for trl-bf16; peak GPU memory is
reported beside RSS, and MFU is against a bf16 matmul measured on that GPU. `--model DIR` benchmarks
any HF model directory; `--random-weights` keeps its architecture and tokenizer but draws the weights
(for a machine the embedded model cannot travel to: speed and memory are the same, losses are not the
demo's). `--shape llama-8b` (with `--random-weights`) widens that architecture to Llama 3 8B's (4096 wide,
32 layers, 14336 MLP, 32 heads over 8 KV heads, untied head) with the tokenizer's vocabulary, drawn in bf16 on
the device: an 8B-class model with no download. `--trl-weights bfloat16` loads TRL's base in bf16 (an 8B in
fp32 would not leave room for the rest); the default keeps TRL's own fp32 loading.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "support_tickets" / "train.jsonl"
VARIANTS = ("tuneforge", "tuneforge-guard", "tuneforge-unfused", "tuneforge-full", "tuneforge-compile",
            "tuneforge-qlora", "tuneforge-packed", "tuneforge-padded", "trl", "trl-packing", "trl-bf16",
            "trl-bf16-no-gc", "trl-qlora")
# Llama 3 8B's shape (its config.json), applied over the benchmarked model's own config by --shape llama-8b.
SHAPES = {"llama-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                       "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 500000.0,
                       "max_position_embeddings": 8192, "tie_word_embeddings": False, "rms_norm_eps": 1e-5}}


def measure_matmul_peak(dtype_name: str, size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def rows(n: int) -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines()[:n]]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_tuneforge(args, full: bool, **settings) -> dict:
    from tuneforge.config import build_config
    from tuneforge.recipes.sft import train

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows(args.examples)))
        summary = train(build_config({
            "data": str(data), "output": str(Path(tmp) / "out"), "epochs": args.epochs, "batch_size": args.batch_size,
            "learning_rate": args.lr_full if full else args.lr, "lora_r": 16, "lora_alpha": 32, "full": full,
            "model": args.model, "warmup_ratio": 0.05, "lr_schedule": "cosine", "seed": 42, **settings,
        }))
        records = [json.loads(line) for line in (Path(tmp) / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("type") == "train" and "loss" in r]
    tail = losses[-max(1, len(losses) // 10):]  # as TRL's below: the mean of the last tenth of the step losses
    return {
        "tokens": summary["trained_tokens"], "seconds": summary["train_seconds"], "final_loss": sum(tail) / len(tail),
        "loss_curve": losses, "n_params": summary["n_parameters"], "n_trainable": summary["n_trainable_parameters"], "dtype": summary["dtype"],
        "steps": summary["steps"], "head_tokens": summary["loss_tokens"], "head_trains": full,
    }


def run_trl(args, packing: bool, bf16: bool, checkpointing: bool = True, qlora: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from tuneforge.models import load_tokenizer, resolve_model

    path = resolve_model(args.model).path
    tokenizer = load_tokenizer(path)
    loading = {"dtype": torch.bfloat16 if args.trl_weights == "bfloat16" or qlora else torch.float32}
    if qlora:  # as TRL's and PEFT's QLoRA guides: NF4, double quantisation, bf16 compute
        loading["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    if args.device == "cuda":
        loading["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(path, **loading)
    data = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows(args.examples)]
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
            # transformers 5 takes the warmup ratio as a float warmup_steps < 1.
            learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=1, save_strategy="no",
            report_to=[], max_length=2048, packing=packing, bf16=bf16, use_cpu=args.device == "cpu", seed=42, dataloader_num_workers=0,
            gradient_checkpointing=checkpointing,
        )
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(data), processing_class=tokenizer,
                             peft_config=lora)
        lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    tail = losses[-max(1, len(losses) // 10):]
    n_params = sum(p.numel() for p in trainer.model.parameters())
    n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    tokens = int(sum(lengths) * args.epochs)
    return {"tokens": tokens, "seconds": seconds, "final_loss": sum(tail) / len(tail), "loss_curve": losses,
            "n_params": n_params, "n_trainable": n_trainable, "dtype": "bfloat16" if bf16 else "float32",
            "steps": trainer.state.global_step, "head_tokens": tokens, "head_trains": False}


def run_one(args) -> dict:
    like_for_like = {"forgetting_guard": "off"}  # TRL has no forgetting guard
    if args.run_one == "tuneforge":
        result = run_tuneforge(args, full=False, **like_for_like)
    elif args.run_one == "tuneforge-guard":
        result = run_tuneforge(args, full=False)
    elif args.run_one == "tuneforge-unfused":
        result = run_tuneforge(args, full=False, fused_lora=False, **like_for_like)
    elif args.run_one == "tuneforge-full":
        result = run_tuneforge(args, full=True, **like_for_like)
    elif args.run_one == "tuneforge-compile":
        result = run_tuneforge(args, full=False, compile=True, **like_for_like)
    elif args.run_one == "tuneforge-qlora":
        result = run_tuneforge(args, full=False, quantize="4bit", **like_for_like)
    elif args.run_one in ("tuneforge-packed", "tuneforge-padded"):
        result = run_tuneforge(args, full=False, packing="on" if args.run_one == "tuneforge-packed" else "off", **like_for_like)
    elif args.run_one == "trl-bf16-no-gc":
        result = run_trl(args, packing=False, bf16=True, checkpointing=False)
    elif args.run_one == "trl-qlora":
        result = run_trl(args, packing=False, bf16=True, qlora=True)
    else:
        result = run_trl(args, packing=args.run_one == "trl-packing", bf16=args.run_one == "trl-bf16")
    result["peak_rss_mb"] = peak_rss_mb()
    import torch

    if torch.cuda.is_available():
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def random_weights_copy(model: str, folder: Path, shape: str | None = None, device: str = "cpu") -> str:
    """The model's architecture and tokenizer with freshly drawn weights (seeded), saved to `folder`; with
    `shape`, the architecture widened to SHAPES[shape] (drawn in bf16 on `device`: 8B in fp32 on the CPU would
    take minutes and 32 GB)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tuneforge.models import load_tokenizer, resolve_model

    path = resolve_model(model).path
    tokenizer = load_tokenizer(path)
    torch.manual_seed(0)
    if shape is None:
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).save_pretrained(folder, safe_serialization=True)
    else:
        overrides = {k: v for k, v in SHAPES[shape].items() if k != "model_type"}
        config = AutoConfig.for_model(SHAPES[shape]["model_type"], vocab_size=len(tokenizer),
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id, **overrides)
        with torch.device(device):
            drawn = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        drawn.save_pretrained(folder, safe_serialization=True)
        del drawn
        if device == "cuda":
            torch.cuda.empty_cache()
    tokenizer.save_pretrained(folder)
    return str(folder)


def model_shape(model: str) -> dict:
    """Weights of the decoder's Linears, the head's vocabulary x width, layers and width, from the config alone."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    head = skeleton.get_output_embeddings()
    linears = sum(m.weight.numel() for m in skeleton.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    text = config.get_text_config()
    return {"linear": linears, "head": head.weight.numel(), "layers": text.num_hidden_layers, "hidden": text.hidden_size}


def executed_flops(result: dict, shape: dict, mean_seq: float) -> float:
    """The matmul FLOPs the variant executes (see the module docstring): Linears, LoRA, attention, and the head
    at the positions where it is computed."""
    full = result["head_trains"]
    body = (6 if full else 4) * shape["linear"] + (0 if full else 6 * result["n_trainable"])
    attention = 6 * shape["layers"] * mean_seq * shape["hidden"]
    head = (6 if full else 4) * shape["head"] * result["head_tokens"]
    return (body + attention) * result["tokens"] + head


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-full", type=float, default=5e-5)
    parser.add_argument("--variants", default="tuneforge,trl,trl-packing,tuneforge-full",
                        help=f"comma-separated, from {', '.join(VARIANTS)} (trl-bf16 only where bf16 is fast)")
    parser.add_argument("--run-one", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="alias or HF model dir (both tools train it)")
    parser.add_argument("--random-weights", action="store_true", help="same architecture and tokenizer, drawn weights")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="with --random-weights: this architecture's shape instead")
    parser.add_argument("--trl-weights", choices=("float32", "bfloat16"), default="float32",
                        help="the dtype TRL loads the base in (its default: float32)")
    args = parser.parse_args()
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.run_one:
        print("RESULT " + json.dumps(run_one(args)))
        return 0

    from tuneforge.models import bf16_is_fast, resolve_model

    if args.device == "cuda":
        peaks = {"float32": measure_matmul_peak("float32", 8192, 10, "cuda"), "bfloat16": measure_matmul_peak("bfloat16", 8192, 10, "cuda")}
    else:
        peaks = {"float32": measure_matmul_peak("float32")}
        peaks["bfloat16"] = measure_matmul_peak("bfloat16", size=2048 if bf16_is_fast("cpu") else 256, repeats=2)
    scratch = tempfile.TemporaryDirectory()
    shown_model = args.model
    if args.random_weights:
        args.model = random_weights_copy(args.model, Path(scratch.name) / "model", args.shape, args.device)
    elif args.shape:
        parser.error("--shape draws a model: use it with --random-weights")
    shape = model_shape(str(resolve_model(args.model).path))
    results = {}
    for variant in args.variants.split(","):
        command = [sys.executable, __file__, "--run-one", variant, "--examples", str(args.examples), "--epochs", str(args.epochs),
                   "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--lr-full", str(args.lr_full),
                   "--device", args.device, "--model", args.model, "--trl-weights", args.trl_weights]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            print(f"{variant}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        result = json.loads(line.removeprefix("RESULT "))
        result["tokens_per_second"] = result["tokens"] / result["seconds"]
        result["executed_tflops"] = executed_flops(result, shape, result["tokens"] / (args.examples * args.epochs)) / 1e12
        result["mfu"] = result["executed_tflops"] / result["seconds"] / (peaks[result["dtype"]] / 1e12)
        results[variant] = result
        print(f"{variant}: {result['tokens_per_second']:.1f} tokens/s, peak RSS {result['peak_rss_mb']:.0f} MB, "
              f"peak GPU {result.get('peak_gpu_mb', 0):.0f} MB, "
              f"final loss {result['final_loss']:.4f}", file=sys.stderr, flush=True)
    baseline = results.get("trl", {}).get("tokens_per_second")
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPUs, threads {torch.get_num_threads()}"
    print(f"\ntorch {torch.__version__}, {where}; model {shown_model}{(' (random weights' + (f', {args.shape} shape' if args.shape else '') + ')') if args.random_weights else ''}; matmul peak "
          f"fp32 {peaks['float32'] / 1e12:.3f} TFLOP/s, bf16 {peaks['bfloat16'] / 1e12:.4f} TFLOP/s; "
          f"{args.examples} examples x {args.epochs} epochs, batch {args.batch_size}\n")
    print("| variant | tokens/s | vs TRL default | peak RSS (MB) | peak GPU (MB) | final loss | executed TFLOP | MFU (executed) | steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, r in results.items():
        ratio = f"{r['tokens_per_second'] / baseline:.2f}×" if baseline else "n/a"
        gpu = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "-"
        print(f"| {variant} | {r['tokens_per_second']:.1f} | {ratio} | {r['peak_rss_mb']:.0f} | {gpu} | {r['final_loss']:.4f} | "
              f"{r['executed_tflops']:.2f} | {r['mfu']:.1%} | {r['steps']} |")
    scratch.cleanup()
    if args.json:
        print(json.dumps({"peaks": peaks, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
