"""Evaluate a model on held-out examples:  tuneforge eval --data test.jsonl --adapter runs/demo --json

For each example the prompt is every message before its last assistant turn; the model answers
greedily (batched, KV cache) and the answer is compared with that last assistant turn.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tuneforge.data.formats import load_conversations
from tuneforge.errors import UserError


def split_prompt_and_reference(messages: list[dict]) -> tuple[list[dict], str]:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = [{k: v for k, v in m.items() if k != "weight"} for m in messages[:last]]
    return prompt, messages[last]["content"]


def load_eval_set(path: str | Path) -> tuple[list[list[dict]], list[str], list]:
    conversations = load_conversations(path)
    prompts, references, tools = [], [], []
    for conversation in conversations:
        prompt, reference = split_prompt_and_reference(conversation.messages)
        if not prompt:
            raise UserError("the last assistant turn has no prompt before it", path=str(path), line=conversation.line)
        prompts.append(prompt)
        references.append(reference)
        tools.append(conversation.tools)
    return prompts, references, tools


def answer_budget(tokenizer, references: list[str], cap: int) -> int:
    """Enough new tokens for the longest reference plus slack, never more than `cap`."""
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    return min(cap, longest + 16)


def evaluate(model, tokenizer, data: str | Path, max_new_tokens: int = 256, batch_size: int = 32) -> dict:
    from tuneforge.evaluate.metrics import score
    from tuneforge.generation import generate_chat

    prompts, references, tools = load_eval_set(data)
    started = time.perf_counter()
    outputs = generate_chat(
        model, tokenizer, prompts, max_new_tokens=answer_budget(tokenizer, references, max_new_tokens),
        batch_size=batch_size, tools_list=tools,
    )
    seconds = time.perf_counter() - started
    predictions = [o["text"] for o in outputs]
    result = score(predictions, references)
    completion_tokens = sum(o["completion_tokens"] for o in outputs)
    result.update(
        seconds=round(seconds, 3),
        mean_prompt_tokens=round(sum(o["prompt_tokens"] for o in outputs) / len(outputs), 2),
        generated_tokens_per_second=round(completion_tokens / max(seconds, 1e-9), 2),
    )
    result["examples"] = [
        {"prompt": p[-1]["content"], "reference": r, "prediction": o["text"]}
        for p, r, o in zip(prompts, references, outputs, strict=True)
    ]
    return result


def write_predictions(path: str | Path, result: dict) -> None:
    with Path(path).open("w") as handle:
        for example in result["examples"]:
            handle.write(json.dumps(example) + "\n")
