"""A trained reward model: the causal LM's body with LoRA (or fully trained) plus a linear value head.

    tuneforge train --method reward --data prefs.jsonl --output runs/rm     # trains one (recipes/reward.py)
    rm = load_reward_model("runs/rm"); rm(prompt_messages, completion)       # scores with it (GRPO, scripts)

A model capability shared by the reward recipe (which trains `ScoredModel`) and GRPO (which scores
completions with a saved one), so neither recipe imports the other. Files beside the adapter:
`value_head.safetensors` and `reward_config.json` (pooling, the answer-length scale, max_length).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tuneforge.checkpoint import save_weights, write_json_atomic
from tuneforge.config import TrainConfig
from tuneforge.data.batching import collate
from tuneforge.data.preference import TokenizedPair, with_answer
from tuneforge.data.tokenize import IGNORE_INDEX, tokenize_conversation
from tuneforge.errors import UserError
from tuneforge.trainable import final_hidden_states

VALUE_HEAD_FILE = "value_head.safetensors"
REWARD_CONFIG_FILE = "reward_config.json"


class ScoredModel(torch.nn.Module):
    """The causal LM's body (LoRA-wrapped) and a linear value head; its parameters are what trains.

    pooling "last": the head reads the last answer position (the end-of-turn token), which has attended to
    the whole answer. "mean": the head scores every answer position and the score is their mean times
    `answer_tokens` (the training answers' mean token count, a constant): the state at a wrong field value
    reports it directly instead of through the end-of-turn token, a one-token difference in a typical
    answer moves the score as much as in a sum, and length alone moves nothing (a reward model for RL must
    not pay for shorter or longer answers). "sum": the values summed, the shape of DPO's implicit reward,
    whose score also grows or shrinks with the answer's length.
    """

    def __init__(self, model, hidden_size: int, pooling: str = "mean", answer_tokens: float = 1.0):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.answer_tokens = float(answer_tokens)
        self.value_head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.value_head.weight, std=1.0 / math.sqrt(hidden_size))
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, batch: dict) -> torch.Tensor:
        """One score per row, from its answer (trained-label) positions."""
        hidden = final_hidden_states(self.model, batch)
        answer = batch["labels"] != IGNORE_INDEX
        if self.pooling in ("mean", "sum"):
            values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
            total = (values * answer).sum(dim=1)
            if self.pooling == "sum":
                return total
            return total / answer.sum(dim=1).clamp(min=1) * self.answer_tokens
        positions = torch.arange(batch["labels"].shape[1], device=hidden.device)
        last = torch.where(answer, positions, -1).amax(dim=1)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.value_head(picked.to(self.value_head.weight.dtype)).squeeze(-1)


def mean_answer_tokens(pairs: list[TokenizedPair]) -> float:
    """Mean count of trained (answer) tokens over both sides of the pairs: the scale of mean pooling."""
    counts = [sum(1 for label in side.labels if label != IGNORE_INDEX) for p in pairs for side in (p.chosen, p.rejected)]
    return round(sum(counts) / len(counts), 3) if counts else 1.0


def save_reward_model(scored: ScoredModel, tokenizer, output: Path, config: TrainConfig) -> None:
    save_weights(scored.model, tokenizer, output)
    head = {k: v.detach().float().contiguous().cpu() for k, v in scored.value_head.state_dict().items()}
    save_file(head, str(output / VALUE_HEAD_FILE))
    write_json_atomic(
        output / REWARD_CONFIG_FILE,
        {
            "model": config.model,
            "full": config.full,
            "max_length": config.max_length,
            "hidden_size": scored.value_head.in_features,
            "pooling": scored.pooling,
            "answer_tokens": scored.answer_tokens,
            "score_position": {"last": "last answer token (end of turn)", "mean": "mean over answer tokens x answer_tokens", "sum": "sum over answer tokens"}[scored.pooling],
        },
    )


class RewardModel:
    """A trained reward model as a reward function: rm(prompt_messages, completion, reference=None) -> float."""

    def __init__(self, scored: ScoredModel, tokenizer, max_length: int, batch_size: int = 16):
        self.scored = scored.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = str(next(scored.parameters()).device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def score_conversations(self, conversations: list[list[dict]], tools_list: list | None = None) -> list[float]:
        """Scores for conversations that each end with the assistant answer to judge."""
        examples = []
        for i, messages in enumerate(conversations):
            *prompt, answer = messages
            tools = (tools_list or [None] * len(conversations))[i]
            examples.append(
                tokenize_conversation(self.tokenizer, with_answer(prompt, answer["content"]), tools, self.max_length)
            )
        scores: list[float] = []
        for start in range(0, len(examples), self.batch_size):
            batch = collate(examples[start : start + self.batch_size], self.pad_id, self.device)
            scores.extend(float(s) for s in self.scored(batch))
        return scores

    def __call__(self, prompt_messages: list[dict], completion: str, reference: str | None = None) -> float:
        return self.score_conversations([[*prompt_messages, {"role": "assistant", "content": completion}]])[0]

    def batch(self, prompts: list[list[dict]], completions: list[str], references: list) -> list[float]:
        return self.score_conversations(
            [[*p, {"role": "assistant", "content": c}] for p, c in zip(prompts, completions, strict=True)]
        )


def load_reward_model(folder: str | Path, device: str | None = None) -> RewardModel:
    from tuneforge.models import load_model

    folder = Path(folder)
    if not (folder / VALUE_HEAD_FILE).is_file() or not (folder / REWARD_CONFIG_FILE).is_file():
        raise UserError(
            f"{folder}: not a reward model (no {VALUE_HEAD_FILE} / {REWARD_CONFIG_FILE}); train one with --method reward"
        )
    settings = json.loads((folder / REWARD_CONFIG_FILE).read_text())
    model, tokenizer = load_model(None, str(folder), dtype=torch.float32, device=device)
    # Reward models written before pooling was a choice read the last token.
    scored = ScoredModel(model, settings["hidden_size"], settings.get("pooling", "last"), settings.get("answer_tokens", 1.0))
    scored.value_head.load_state_dict(load_file(str(folder / VALUE_HEAD_FILE)))
    scored.to(next(model.parameters()).device)
    for parameter in scored.parameters():
        parameter.requires_grad_(False)
    return RewardModel(scored, tokenizer, settings["max_length"])
