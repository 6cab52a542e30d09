"""Every architecture tuneforge trains, written as GGUF, read by llama.cpp itself and by transformers.

    pytest tests/unit/test_gguf_llamacpp.py          # llama.cpp parts skip unless scripts/install_llama_cpp.sh ran

transformers' GGUF loader is written to undo what llama.cpp's converter does (it un-permutes Q/K and
subtracts Gemma's +1 again), so a file read back by it passes even when writer and loader make the same
mistake. llama.cpp is the runtime the file is for, so it is the reference here: it must load the file,
tokenize like the HF tokenizer, and give the HF model's logits.

Tolerances, relative to the largest |logit| of the prompt (about 5 for these models):

- f32 file, f32 KV cache: the same arithmetic in another order, ~1e-6 observed; bound 1e-4. Gemma's
  GELU is a lookup table over f16 inputs in llama.cpp's CPU backend (~2.5e-4 observed); bound 1e-3.
- f16 file, llama.cpp's default f16 KV cache: weights, the activations entering each matmul and the
  cached K/V are each rounded to 11 significant bits (2^-11 ~ 5e-4 relative), through two layers,
  ~2.5e-3 observed; bound 1e-2.
- greedy tokens: at every position where the HF model's best token leads the second by more than twice
  the largest logit difference seen, llama.cpp must pick the same one (nearer ties may flip, as between
  any two runtimes), and such clear choices must be most positions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tiny_models import ARCHITECTURES
from tests.unit.gguf_models import (
    PROMPTS,
    hf_logits,
    llama_cpp_logits,
    load_in_llama_cpp,
    make_sentencepiece_style_tokenizer,
    tiny_bpe_model,
)
from tuneforge.export.gguf_vocab import CHECK_TEXT

# Longer than the tiny models' 16-token sliding window, so Gemma's local layers are exercised.
LONG_PROMPT = " ".join(PROMPTS)
BOUND = {"f32": 1e-4, "f16": 1e-2}
GELU_TABLE_BOUND = 1e-3
# llama.cpp runs these with full attention (Mistral: its llama arch has no window; Phi-3: disabled
# upstream), so they can match HF only inside the window.
FULL_ATTENTION_IN_LLAMA_CPP = {"mistral", "phi3"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(architecture, dtype) -> (HF model, tokenizer, GGUF path), built once per module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.export import export

    root = tmp_path_factory.mktemp("gguf-archs")
    cache = {}

    def get(architecture: str, dtype: str):
        if architecture not in cache:
            folder = tiny_bpe_model(architecture, root / f"model-{ARCHITECTURES.index(architecture)}")
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            cache[architecture] = (folder, model, AutoTokenizer.from_pretrained(folder))
        folder, model, tokenizer = cache[architecture]
        path = export(None, "gguf", root / f"{folder.name}-{dtype}", dtype=dtype, model=str(folder))[0]
        return model, tokenizer, path

    return get


def compared_positions(architecture: str, model, n_tokens: int) -> int:
    window = getattr(model.config, "sliding_window", None)
    if architecture in FULL_ATTENTION_IN_LLAMA_CPP and window:
        return min(n_tokens, window)
    return n_tokens


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_llama_cpp_gives_the_hf_model_logits(exported, architecture, dtype):
    model, tokenizer, path = exported(architecture, dtype)
    llm = load_in_llama_cpp(path, f32_cache=dtype == "f32")
    ids = tokenizer(LONG_PROMPT)["input_ids"]
    assert len(ids) > model.config.sliding_window if getattr(model.config, "sliding_window", None) else True
    n = compared_positions(architecture, model, len(ids))
    expected = hf_logits(model, ids)[:n]
    got = llama_cpp_logits(llm, ids)[:n]
    llm.close()

    scale = np.abs(expected).max()
    bound = BOUND[dtype]
    if dtype == "f32" and architecture.startswith("gemma"):
        bound = GELU_TABLE_BOUND
    error = np.abs(got - expected).max()
    assert error <= bound * scale, (error / scale, bound)

    top2 = np.sort(expected, axis=-1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 2 * error
    assert decided.mean() >= 0.8, decided.mean()  # most next tokens are clear choices, not near ties
    assert (got.argmax(-1) == expected.argmax(-1))[decided].all()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_llama_cpp_tokenizes_like_the_hf_tokenizer(exported, architecture):
    """The pre-tokenizer name written (gpt-2 for this vocabulary) makes llama.cpp split text as HF does,
    including llama.cpp's own check text (whitespace runs, emoji, digit runs, contractions, scripts)."""
    _, tokenizer, path = exported(architecture, "f16")
    llm = load_in_llama_cpp(path)
    for text in [*PROMPTS, CHECK_TEXT, "<|im_start|>user\nhi<|im_end|>\n"]:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text)["input_ids"], text
    llm.close()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_transformers_reads_back_the_same_weights(exported, architecture):
    """transformers' loader inverts the writer's layout changes, so weights must come back exactly (f32).

    Its config reading is partial (it ignores Llama 3.1's rope_freqs, Gemma's query scale and softcaps,
    Qwen3's head_dim), so logits are compared with the original config around the read-back weights.
    """
    from transformers import AutoModelForCausalLM

    model, tokenizer, path = exported(architecture, "f32")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        state = loaded.state_dict()
    except RuntimeError:  # Qwen3's head_dim is not read, so its tensor shapes do not fit: read the tensors alone
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        state = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    original = model.state_dict()
    for name, tensor in original.items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        # Gemma norms are stored as w + 1 and read back as (w + 1) - 1: exact up to f32 spacing at 1.
        shifted = architecture.startswith("gemma") and name.endswith("norm.weight")
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=2**-23 if shifted else 0, msg=name)
    rebuilt = type(model)(model.config).eval()
    rebuilt.load_state_dict({**original, **{k: v for k, v in state.items() if k in original}})
    ids = tokenizer(LONG_PROMPT)["input_ids"]
    np.testing.assert_allclose(hf_logits(rebuilt, ids), hf_logits(model, ids), rtol=1e-5, atol=1e-5)


def test_llama3_rope_freqs_are_llama_cpps_divisors(exported):
    """Llama 3.1 rope scaling divides each frequency theta_i = base^(-2i/d) by a factor (what llama.cpp's
    rope_freqs tensor holds). With wavelength w_i = 2 pi / theta_i, original context L, factor s and
    low/high frequency factors a, b: w_i < L/b keeps 1, w_i > L/a takes s, in between the factor is
    1 / ((1 - t)/s + t) with t = (L/w_i - a)/(b - a). Checked against that formula, written out here."""
    from gguf import GGUFReader

    model, _, path = exported("llama3", "f32")
    rope = model.config.rope_parameters
    dim = model.config.head_dim
    theta = rope["rope_theta"] ** (-np.arange(0, dim, 2) / dim)
    wavelength = 2 * np.pi / theta
    length, s, a, b = rope["original_max_position_embeddings"], rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    t = (length / wavelength - a) / (b - a)
    expected = np.where(wavelength < length / b, 1.0, np.where(wavelength > length / a, s, 1 / ((1 - t) / s + t)))
    assert 1.0 in expected and s in expected  # the tiny config reaches both ends of the ramp
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    np.testing.assert_allclose(np.asarray(tensors["rope_freqs.weight"].data), expected, rtol=1e-6)


def test_gemma_norms_are_written_plus_one_and_local_layers_per_layer(exported):
    """Gemma's RMSNorm multiplies by (1 + w); llama.cpp multiplies by the stored weight."""
    from gguf import GGUFReader

    model, _, path = exported("gemma2", "f32")
    reader = GGUFReader(str(path))
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    hf = model.state_dict()
    np.testing.assert_array_equal(tensors["blk.0.post_ffw_norm.weight"],
                                  hf["model.layers.0.post_feedforward_layernorm.weight"].numpy() + 1)
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("gemma2.")}
    assert fields["gemma2.attention.sliding_window_pattern"] == [t == "sliding_attention" for t in model.config.layer_types]
    assert fields["gemma2.final_logit_softcapping"] == pytest.approx(30.0)


def test_gemma3_global_layers_and_their_linear_rope_scaling_in_llama_cpp(tmp_path):
    """The tiny Gemma 3 has only local layers; Gemma 3 4B+ mixes global layers whose rope (base 1e6) is
    linearly scaled by 8 while local layers keep their own base (1e4 there; 2e4 here, so that a file
    falling back to llama.cpp's default base would show). Same model, that layer mix."""
    from tests.tiny_models import tiny_config
    from tests.unit.gguf_models import make_bpe_tokenizer
    from tuneforge.export.gguf_writer import write_gguf

    tokenizer = make_bpe_tokenizer()
    config, model_class = tiny_config("gemma3", tokenizer)
    config.num_hidden_layers = 3
    config.layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    config.sliding_window = 8
    config.rope_parameters = {"sliding_attention": {"rope_type": "default", "rope_theta": 20000.0},
                              "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}
    torch.manual_seed(0)
    model = model_class(config).eval()
    path = write_gguf(model, tokenizer, tmp_path / "model.gguf", "f32", name="tiny")
    ids = tokenizer(LONG_PROMPT)["input_ids"]
    llm = load_in_llama_cpp(path, f32_cache=True)
    got, expected = llama_cpp_logits(llm, ids), hf_logits(model, ids)
    llm.close()
    assert np.abs(got - expected).max() <= GELU_TABLE_BOUND * np.abs(expected).max()


def test_sentencepiece_style_vocabulary_tokenizes_alike_in_llama_cpp(tmp_path):
    """A byte-fallback BPE becomes llama.cpp's SPM vocabulary: merge-ranked scores, BYTE pieces, "▁" prefix."""
    from transformers import AutoTokenizer

    from tuneforge.export import export

    folder = tiny_bpe_model("llama", tmp_path / "base", tokenizer=make_sentencepiece_style_tokenizer())
    (path,) = export(None, "gguf", tmp_path / "out", model=str(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    llm = load_in_llama_cpp(path)
    for text in [*PROMPTS, "h\u00e9llo w\u00f6rld \U0001f600", "  two  spaces"]:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text)["input_ids"], text
    llm.close()
