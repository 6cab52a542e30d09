"""Preference pairs and RL prompts -> tokens: the data steps of `--method dpo | reward | grpo`.

A pair becomes two `TokenizedExample`s, prompt + chosen and prompt + rejected, each tokenised exactly as
SFT tokenises a conversation whose last assistant turn is trained (`tokenize_conversation`): the answer
tokens carry labels, including the template's end-of-turn token, so the sequence log-prob also scores
stopping. Earlier assistant turns in the prompt are context only (weight 0).

GRPO prompt rows are conversations in any chat format (formats.CHAT_FORMATS, any container) whose last
message is a user message; an optional final assistant turn is the reference answer, given only to the
reward function. The whole row is kept as the prompt's `item`: OpenAI's reinforcement rows carry their
grading context beside the messages (`{"messages": [...], "reference_answer": ...}`), which a grader reads
as `{{ item.reference_answer }}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.data.formats import CHAT_FORMATS, PreferencePair, detect_format, row_to_messages
from tuneforge.data.readers import Row, read_rows
from tuneforge.data.tokenize import TokenizedExample, tokenize_conversation
from tuneforge.errors import UserError


@dataclass
class TokenizedPair:
    chosen: TokenizedExample
    rejected: TokenizedExample

    @property
    def length(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


def with_answer(prompt: list[dict], answer: str) -> list[dict]:
    """The prompt (its assistant turns as untrained context) followed by one trained assistant answer."""
    context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in prompt]
    return [*context, {"role": "assistant", "content": answer, "weight": 1}]


def tokenize_pair(tokenizer, pair: PreferencePair, max_length: int, path: str = "<data>") -> TokenizedPair:
    sides = []
    for answer in (pair.chosen, pair.rejected):
        try:
            example = tokenize_conversation(tokenizer, with_answer(pair.prompt, answer), pair.tools, max_length)
        except UserError as exc:
            raise UserError(exc.bare_message, path=path, line=pair.line, code=exc.code) from None
        if example.n_trained == 0:
            raise UserError("an answer has no tokens left after truncation; raise max_length", path=path,
                            line=pair.line, code="no_trained_tokens")
        sides.append(example)
    return TokenizedPair(*sides)


def tokenize_pairs(tokenizer, pairs: list[PreferencePair], max_length: int, path: str) -> list[TokenizedPair]:
    return [tokenize_pair(tokenizer, pair, max_length, path) for pair in pairs]


@dataclass
class RLPrompt:
    messages: list[dict]  # ends with a user message
    reference: str | None = None
    tools: list | None = None
    line: int | Row = 0
    item: dict = field(default_factory=dict)  # the row as read: a grader's `item` namespace


def load_rl_prompts(path: str) -> list[RLPrompt]:
    """Conversations ending in a user message, or in an assistant message taken as the reference answer."""
    prompts = []
    for line, row in read_rows(path):
        where = {"path": str(path), "line": line}
        if detect_format(row) not in CHAT_FORMATS:
            raise UserError("expected a conversation (e.g. a chat row with 'messages', the last one a user message)",
                            code="bad_prompt_row", **where)
        messages, tools = row_to_messages(row, str(path), line)
        messages = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
        reference = None
        if messages[-1]["role"] == "assistant":
            reference = messages.pop()["content"]
        if not messages or messages[-1]["role"] != "user":
            raise UserError("the prompt must end with a user message (optionally followed by one reference "
                            "assistant message)", code="bad_prompt_row", **where)
        prompts.append(RLPrompt(messages, reference, tools, line, item=row))
    if not prompts:
        raise UserError("no examples in file", path=str(path), code="empty_file")
    return prompts
