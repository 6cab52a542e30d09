"""Serving: one base model in memory, every LoRA adapter in the same batch, continuous batching.

    from tuneforge.serving import Engine, GenerationRequest
    engine = Engine()                      # a scheduler thread decodes every running request together
    engine.submit(GenerationRequest(id="1", model="smollm2-135m-instruct", adapter="runs/demo",
                                    messages=[{"role": "user", "content": "Hi"}]), emit=print)

(The engine is being written; this first commit fixes the constraint interface the JSON-schema
constraint in tuneforge/constrained.py is written against.)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Constraint(Protocol):
    """What constrained decoding (tuneforge/constrained.py: `make_constraint(tokenizer, response_format)`)
    gives the engine: one object per generated choice, stepped by the scheduler thread.

    Each decode step, for a row that carries a constraint, the engine:
      1. asks `is_finished()`; True ends the row (finish_reason "stop") without sampling another token;
      2. calls `fill_allowed(mask)` with `mask` a fresh 1-D `torch.bool` CPU tensor of the model's logits
         width (which may exceed `len(tokenizer)`), all False; the constraint sets True at every token id
         allowed next (end-of-turn ids included when the output may end there). Every other token's logit
         becomes -inf (after logit_bias and penalties, before temperature and top_p); a mask left all False
         ends that request with an error;
      3. samples a token and calls `advance(token_id)` with it (not called for an end-of-turn token,
         which ends the row).
    """

    def fill_allowed(self, mask) -> None: ...

    def advance(self, token_id: int) -> None: ...

    def is_finished(self) -> bool: ...
