"""A stand-in for `tuneforge preview FILE --json --n N --method M`: words as tokens, a chat-like rendering
(`<|user|> ... <|assistant|> ... <|end|>`), the assistant's words and its end token trained; DPO rows give a
chosen and a rejected sequence. An unreadable row is the verb's user error (exit 2, one line)."""

import json
import sys

path = sys.argv[1]
n = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 3
method = sys.argv[sys.argv.index("--method") + 1] if "--method" in sys.argv else "sft"
model = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else "smollm2-135m-instruct"


def tokens(messages):
    out = []
    for message in messages:
        trained = message["role"] == "assistant"
        out.append({"text": f"<|{message['role']}|>", "id": len(out), "trained": False})
        for word in str(message.get("content", "")).split():
            out.append({"text": word + " ", "id": len(out), "trained": trained})
        out.append({"text": "<|end|>", "id": len(out), "trained": trained})
    return out


examples = []
with open(path) as handle:
    for number, line in enumerate(handle, start=1):
        if len(examples) >= n:
            break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if method == "dpo":
                prompt = [{"role": "user", "content": row["prompt"]}]
                sequences = [(f"chosen (line {number})", prompt + [{"role": "assistant", "content": row["chosen"]}]),
                             (f"rejected (line {number})", prompt + [{"role": "assistant", "content": row["rejected"]}])]
            else:
                sequences = [(f"line {number}", row["messages"])]
        except (ValueError, KeyError, TypeError) as exc:
            print(f"tuneforge: error: {path} line {number}: cannot be previewed ({type(exc).__name__})", file=sys.stderr)
            sys.exit(2)
        for title, messages in sequences:
            pieces = tokens(messages)
            examples.append({"line": number, "row": None, "title": title, "n_tokens": len(pieces),
                             "n_trained": sum(p["trained"] for p in pieces), "tokens": pieces})
print(json.dumps({"model": model, "method": method, "examples": examples}))
