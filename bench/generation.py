"""Batched greedy generation vs Hugging Face `generate` one prompt at a time:  python bench/generation.py [--n 32]

Same model (embedded SmolLM2-135M-Instruct, or --adapter DIR), same prompts (the demo's held-out
tickets), same token budget, greedy. Prints wall time, answers/s and the speed-up, and checks that both
produce the same answers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--adapter")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()

    from tuneforge.data.tokenize import end_of_turn_ids, tokenize_prompt
    from tuneforge.evaluate.run import load_eval_set
    from tuneforge.generation import generate_chat
    from tuneforge.models import load_model

    model, tokenizer = load_model(adapter=args.adapter)
    prompts, _, _ = load_eval_set(ROOT / "examples" / "support_tickets" / "test.jsonl")
    prompts = prompts[: args.n]

    started = time.perf_counter()
    batched = generate_chat(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens)
    batched_seconds = time.perf_counter() - started

    eos = sorted(end_of_turn_ids(tokenizer, model.config))
    started = time.perf_counter()
    one_by_one = []
    with torch.inference_mode():
        for messages in prompts:
            ids = torch.tensor([tokenize_prompt(tokenizer, messages)])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
            one_by_one.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    single_seconds = time.perf_counter() - started

    same = sum(a["text"].strip() == b.strip() for a, b in zip(batched, one_by_one, strict=True))
    print(f"{args.n} prompts, max {args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}")
    print(f"tuneforge batched (KV cache): {batched_seconds:.1f}s ({args.n / batched_seconds:.2f} answers/s)")
    print(f"HF generate one at a time:    {single_seconds:.1f}s ({args.n / single_seconds:.2f} answers/s)")
    print(f"speed-up {single_seconds / batched_seconds:.1f}x; identical answers {same}/{args.n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
