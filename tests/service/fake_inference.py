"""A stand-in inference process: answers "echo(<model>[+adapter]): <last user message>" word by word."""

import os

from tuneforge.service.inference import serve


def load(model, adapter):
    return (model, os.path.basename(adapter) if adapter else None), None


def generate(
    model,
    _tokenizer,
    conversations,
    max_new_tokens=256,
    temperature=0.0,
    top_p=1.0,
    seed=None,
    stop=None,
    on_token=None,
):
    name, adapter = model
    prompt = conversations[0][-1]["content"]
    words = f"echo({name}{'+' + adapter if adapter else ''}): {prompt}".split(" ")[:max_new_tokens]
    for number, word in enumerate(words):
        if on_token:
            on_token(0, word if number == 0 else " " + word)
    finish = "length" if len(words) == max_new_tokens else "stop"
    return [
        {
            "text": " ".join(words),
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(words),
            "finish_reason": finish,
        }
    ]


if __name__ == "__main__":
    serve(load, generate)
