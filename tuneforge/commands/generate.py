"""The `tuneforge generate` verb:  tuneforge generate --adapter runs/demo "Where is my order?"

Without a prompt it is a chat in the terminal (an empty line or Ctrl-D ends it). The answer streams to
stdout as it is generated (`generation.generate_chat`).
"""

from __future__ import annotations

import sys


def add_generate_command(subparsers) -> None:
    p = subparsers.add_parser("generate", help="answer a prompt (or chat in a REPL) with a base model or adapter")
    p.add_argument("prompt", nargs="?", help="the user message; omit for an interactive chat")
    p.add_argument("--model", help="base model (default: the adapter's base, else smollm2-135m-instruct)")
    p.add_argument("--adapter", help="LoRA adapter dir or full fine-tuned model dir (default: none, the base model)")
    p.add_argument("--system", help="system message put before the conversation (default: none)")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="longest answer, in tokens (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 answers greedily (default: %(default)s)")
    p.set_defaults(func=run_generate)


def run_generate(args) -> int:
    from tuneforge.generation import generate_chat
    from tuneforge.models import load_model

    model, tokenizer = load_model(args.model, args.adapter)
    history = [{"role": "system", "content": args.system}] if args.system else []

    def answer(messages):
        def stream(_index, piece):
            sys.stdout.write(piece)
            sys.stdout.flush()

        out = generate_chat(
            model,
            tokenizer,
            [messages],
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            on_token=stream,
        )[0]
        sys.stdout.write("\n")
        return out["text"]

    if args.prompt is not None:
        answer(history + [{"role": "user", "content": args.prompt}])
        return 0
    print("tuneforge chat: empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            return 0
        if not line.strip():
            return 0
        history.append({"role": "user", "content": line})
        history.append({"role": "assistant", "content": answer(history)})
