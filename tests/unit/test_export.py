"""Export round trips on tiny random models: merge -> HF / GGUF / Ollama -> load back -> same logits.

    pytest tests/unit/test_export.py

The shared tiny fixture has a word-level tokenizer, which GGUF cannot describe; the GGUF tests here use a
tiny byte-level BPE tokenizer (what SmolLM2, Llama-3 and Qwen2 use) from tests/unit/gguf_models.py.
Every architecture in llama.cpp itself: tests/unit/test_gguf_llamacpp.py.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tests.tiny_models import ARCHITECTURES, build_tiny_model
from tests.unit.gguf_models import (
    CHATML,
    PROMPTS,
    llama_cpp_logits,
    load_in_llama_cpp,
    make_bpe_tokenizer,
    make_sentencepiece_style_tokenizer,
)
from tuneforge.errors import UserError

INIT, EMBED = 0.1, 1.0


def make_model_dir(folder, arch: str = "llama", tied: bool = True, hidden: int = 64):
    """A 2-layer random Llama or Qwen2 (q/k/v biases); hidden=256 gives rows that fill whole K-quant blocks.

    Random layers are chaotic: at large init a 0.4% weight error (q8_0) flips many near-tied argmaxes,
    which trained models do not do. Small layers over large embeddings give decided next tokens, as a
    trained model's are, while every layer still changes the logits.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = make_bpe_tokenizer()
    torch.manual_seed(0)
    common = dict(
        vocab_size=len(tokenizer) + 5,  # padded vocabulary: rows the tokenizer never produces
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, tie_word_embeddings=tied, initializer_range=INIT,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, rope_theta=1e6))
        with torch.no_grad():  # random init leaves biases at zero; make them matter
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, EMBED)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def make_adapter(base_dir, folder, poison: bool = False):
    """A LoRA adapter with random (non-zero) B matrices, so merging really changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
        if poison:
            next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-llama")
    base = make_model_dir(root / "base")
    return make_adapter(base, root / "adapter")


def token_batch(tokenizer):
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    width = max(map(len, ids))
    return torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in ids]), [len(r) for r in ids]


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def load_gguf(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_rope_permutation_pairs_rows_like_llama_cpp():
    """HF rotates dim i with i + d/2 within a head; llama.cpp's llama arch rotates 2i with 2i+1.

    So after the permutation, row 2i of each head must be HF row i and row 2i+1 must be HF row i + d/2.
    Checked on row indices, independently of the reshape used to implement it.
    """
    from tuneforge.export.gguf_writer import interleave_rope_halves

    n_head, d = 3, 8
    rows = np.arange(n_head * d, dtype=np.float32)[:, None].repeat(2, axis=1)
    out = interleave_rope_halves(rows, n_head)[:, 0].reshape(n_head, d)
    for h in range(n_head):
        for i in range(d // 2):
            assert out[h, 2 * i] == h * d + i
            assert out[h, 2 * i + 1] == h * d + i + d // 2


@pytest.mark.parametrize("arch,tied", [("llama", True), ("llama", False), ("qwen2", True)])
def test_gguf_f16_round_trip_matches_merged_model(tmp_path, arch, tied):
    from tuneforge.export import export
    from tuneforge.export.merge import merged_model

    base = make_model_dir(tmp_path / "base", arch, tied)
    adapter = make_adapter(base, tmp_path / "adapter")
    (path,) = export(str(adapter), "gguf", tmp_path / "out", dtype="f16")
    assert path == tmp_path / "out" / "model.gguf"

    merged, tokenizer = merged_model(str(adapter))
    loaded, loaded_tokenizer = load_gguf(path)
    assert loaded.config.tie_word_embeddings == tied
    ids, _ = token_batch(tokenizer)
    expected, got = logits_of(merged, ids), logits_of(loaded, ids)
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() < 5e-3 * scale  # f16 storage: ~3 significant digits
    for prompt in PROMPTS:
        assert loaded_tokenizer(prompt)["input_ids"] == tokenizer(prompt)["input_ids"]
    assert loaded_tokenizer.chat_template == CHATML
    assert loaded_tokenizer.eos_token == "<|im_end|>"


def test_gguf_q8_0_keeps_next_token_choices(tmp_path, llama_adapter):
    from gguf import GGMLQuantizationType, GGUFReader

    from tuneforge.export import export
    from tuneforge.export.merge import merged_model

    (path,) = export(str(llama_adapter), "gguf", tmp_path / "q8.gguf", dtype="q8_0")
    types = {t.name: t.tensor_type for t in GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32  # norms stay f32
    assert "output.weight" not in types  # tied embeddings

    merged, tokenizer = merged_model(str(llama_adapter))
    loaded, _ = load_gguf(path)
    ids, lengths = token_batch(tokenizer)
    expected_logits, got_logits = logits_of(merged, ids), logits_of(loaded, ids)
    # q8_0 keeps ~0.4% of each weight's block maximum; the logits move by about as much, relatively.
    assert (got_logits - expected_logits).abs().max() < 0.02 * expected_logits.abs().max()
    expected, got = expected_logits.argmax(-1), got_logits.argmax(-1)
    mask = torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    agreement = (expected == got)[mask].float().mean().item()
    assert agreement >= 0.99, agreement


def test_gguf_bf16_writes_bf16_tensors(tmp_path, llama_adapter):
    from gguf import GGMLQuantizationType, GGUFReader

    from tuneforge.export import export

    (path,) = export(str(llama_adapter), "gguf", tmp_path / "bf16.gguf", dtype="bf16")
    reader = GGUFReader(str(path))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.1.ffn_down.weight"] == GGMLQuantizationType.BF16
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["llama.block_count"] == 2 and fields["llama.embedding_length"] == 64
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.feed_forward_length"] == 128
    # llama.cpp's name for the GPT-2 split rule ("gpt2" is refused by llama.cpp: unknown pre-tokenizer)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.token_type"][:3] == [3, 3, 3]  # the specials are CONTROL
    assert fields["tokenizer.ggml.tokens"][-1].startswith("[PAD")  # padded vocabulary rows are named


def test_hf_export_loads_with_plain_transformers(tmp_path, llama_adapter):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.export import export
    from tuneforge.export.merge import merged_model

    files = export(str(llama_adapter), "hf", tmp_path / "hf")
    assert tmp_path / "hf" / "model.safetensors" in files
    assert not (tmp_path / "hf" / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.chat_template == CHATML
    merged, _ = merged_model(str(llama_adapter))
    ids, _ = token_batch(tokenizer)
    torch.testing.assert_close(logits_of(loaded, ids), logits_of(merged, ids))

    # A full fine-tuned directory (config.json, no adapter_config.json) is re-saved as is.
    export(str(tmp_path / "hf"), "hf", tmp_path / "hf2", dtype="bf16")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf2")
    assert again.dtype == torch.bfloat16


def test_merge_refuses_nan_adapter(tmp_path):
    from tuneforge.export import export

    base = make_model_dir(tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "adapter", poison=True)
    with pytest.raises(UserError, match="non-finite|NaN"):
        export(str(adapter), "gguf", tmp_path / "out")
    assert not (tmp_path / "out" / "model.gguf").exists()


def test_adapter_stays_loadable_by_peft(llama_adapter):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    config = json.loads((llama_adapter / "adapter_config.json").read_text())
    auto = AutoPeftModelForCausalLM.from_pretrained(llama_adapter)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]), llama_adapter)
    assert any("lora_B" in n for n, _ in auto.named_parameters())
    ids = torch.tensor([[1, 5, 9, 12]])
    torch.testing.assert_close(logits_of(auto, ids), logits_of(plain, ids))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_merge_equals_the_adapter_for_every_architecture(tmp_path, architecture):
    """PEFT's merge writes W + (alpha / r) * B @ A into each targeted weight, which is the adapter's own
    forward (W x + (alpha / r) * B A x) folded in: the merged model's logits are the adapter's, up to f32
    rounding. Checked per architecture, since each names and fuses its projections differently
    (Phi-3's qkv_proj and gate_up_proj)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.export.merge import merged_model

    base = build_tiny_model(architecture, tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "adapter")
    ids = torch.tensor([AutoTokenizer.from_pretrained(base)("what is the answer please")["input_ids"]])
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    before = logits_of(plain, ids)
    expected = logits_of(PeftModel.from_pretrained(plain, adapter).eval(), ids)
    merged, _ = merged_model(str(adapter))
    assert (expected - before).abs().max() > 0.05  # the adapter really changes the model
    torch.testing.assert_close(logits_of(merged, ids), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["q4_k_m", "q5_k_m", "q6_k"])
def test_k_quants_come_from_llama_cpps_quantizer(tmp_path, dtype):
    """Rows of 256 values fill whole K blocks, so the named K type is really used, and the file runs in
    llama.cpp. Random 2-layer weights amplify quantization error (a q8_0 file already moves the largest
    logit by ~5% here, where the f16 file moves it by 0.3%), so the check is that llama.cpp's logits stay
    strongly correlated with the model's and mostly pick its next tokens, less so with fewer bits
    (observed correlation 0.994 / 0.988 / 0.957 and agreement 0.89 / 0.78 / 0.63 for q6_k / q5_k_m / q4_k_m)."""
    from gguf import GGMLQuantizationType, GGUFReader

    from tuneforge.export import export

    base = make_model_dir(tmp_path / "base", hidden=256)
    (path,) = export(None, "gguf", tmp_path / "out.gguf", dtype=dtype, model=str(base))
    types = {t.name: t.tensor_type for t in GGUFReader(str(path)).tensors}
    main_type = {"q4_k_m": GGMLQuantizationType.Q4_K, "q5_k_m": GGMLQuantizationType.Q5_K,
                 "q6_k": GGMLQuantizationType.Q6_K}[dtype]
    assert main_type in types.values()
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base).eval()
    ids = AutoTokenizer.from_pretrained(base)(" ".join(PROMPTS))["input_ids"]
    expected = logits_of(model, torch.tensor([ids]))[0].numpy()
    llm = load_in_llama_cpp(path)
    got = llama_cpp_logits(llm, ids)
    llm.close()
    min_correlation, min_agreement = {"q6_k": (0.98, 0.75), "q5_k_m": (0.97, 0.6), "q4_k_m": (0.9, 0.45)}[dtype]
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] >= min_correlation
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= min_agreement


def test_k_quant_without_llama_cpp_says_how_to_get_it(tmp_path, monkeypatch, llama_adapter):
    import sys

    from tuneforge.export import export

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(UserError, match="install_llama_cpp.sh"):
        export(str(llama_adapter), "gguf", tmp_path / "x.gguf", dtype="q4_k_m")
    assert not (tmp_path / "x.gguf").exists()


def test_word_level_tokenizer_is_refused_clearly(tmp_path, tiny_model_dir):
    from tuneforge.export import export

    with pytest.raises(UserError, match="WordLevel"):
        export(None, "gguf", tmp_path / "out", model=str(tiny_model_dir))


def test_hf_refuses_q8_0(tmp_path, llama_adapter):
    from tuneforge.cli import main

    assert main(["export", "--adapter", str(llama_adapter), "--format", "hf", "--dtype", "q8_0",
                 "--output", str(tmp_path / "x")]) == 2


def render_go_messages(template: str, messages: list[dict]) -> str:
    """Just enough of Go's text/template for our TEMPLATEs: `{{- range .Messages }}..{{ end }}` and fields."""
    match = re.fullmatch(r"\{\{- range \.Messages \}\}(.*?)\{\{ end \}\}(.*)", template, re.S)
    body, tail = match.groups()
    out = "".join(body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"]) for m in messages)
    return out + tail


def test_ollama_modelfile_chatml_matches_jinja(tmp_path, llama_adapter, capsys):
    from tuneforge.cli import main

    assert main(["export", "--adapter", str(llama_adapter), "--format", "ollama", "--output", str(tmp_path / "ol")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["files"][-1].endswith("Modelfile")
    text = (tmp_path / "ol" / "Modelfile").read_text()
    assert text.startswith("FROM ./model.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)

    tokenizer = make_bpe_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "refund?"}]
    jinja = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_go_messages(template, messages) == jinja


def with_template(tokenizer, template: str, *specials: str):
    import copy

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = template
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": list(specials)})
    return tokenizer


CONVERSATION = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"}]


def test_ollama_default_system_prompt_and_llama3(tiny_tokenizer):
    from tuneforge.export.ollama import modelfile_text

    smol = with_template(tiny_tokenizer, (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are SmolLM.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ))
    text = modelfile_text(smol)
    assert 'SYSTEM """You are SmolLM."""' in text
    # Ollama puts SYSTEM first when a request has none: the TEMPLATE then renders what the Jinja does.
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    assert render_go_messages(template, [{"role": "system", "content": "You are SmolLM."}, *CONVERSATION]) == (
        smol.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    )

    llama3 = with_template(tiny_tokenizer, (
        "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
        "message['content'] + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ))
    text = modelfile_text(llama3)
    assert 'PARAMETER stop "<|eot_id|>"' in text and "SYSTEM" not in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    assert render_go_messages(template, CONVERSATION) == llama3.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True
    )


def test_ollama_phi3_template_is_translated(tiny_tokenizer):
    from tuneforge.export.ollama import modelfile_text

    phi3 = with_template(tiny_tokenizer, (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
    ), "<|user|>", "<|assistant|>", "<|end|>", "<|system|>")
    text = modelfile_text(phi3)
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    messages = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
    assert render_go_messages(template, messages) == phi3.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert 'PARAMETER stop "<|end|>"' in text


def test_ollama_takes_any_other_template_from_the_gguf(tiny_tokenizer):
    """A template with no plain Go form (Gemma's turns, system folded into the first user turn) is not
    refused: no TEMPLATE (Ollama reads tokenizer.chat_template from the GGUF), the end-of-turn token the
    template writes after an answer as stop, and no SYSTEM when the template has no default."""
    from tuneforge.export.ollama import modelfile_text

    gemma = with_template(tiny_tokenizer, (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}"
        "{% endif %}{% for message in loop_messages %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] + '<end_of_turn>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ), "<start_of_turn>", "<end_of_turn>")
    text = modelfile_text(gemma)
    assert text.startswith("FROM ./model.gguf\n") and "TEMPLATE" not in text.replace("No TEMPLATE", "")
    assert 'PARAMETER stop "<end_of_turn>"' in text and "SYSTEM" not in text

    # Looks like ChatML but is not (no newline after the role): not translated, still exported.
    odd = with_template(tiny_tokenizer, (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' ' + m['content'] + '<|im_end|>' }}{% endfor %}"
    ))
    text = modelfile_text(odd)
    assert "TEMPLATE \"\"\"" not in text and 'PARAMETER stop "<|im_end|>"' in text


def test_sentencepiece_style_tokenizer_round_trips_as_llama_vocab(tmp_path):
    """A byte-fallback BPE (Llama-2 style) is written as `tokenizer.ggml.model = llama` with BYTE tokens."""
    from gguf import GGUFReader
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.export import export

    tokenizer = make_sentencepiece_style_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")

    (path,) = export(None, "gguf", tmp_path / "out", model=str(tmp_path / "base"))
    fields = {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if k.startswith("tokenizer.ggml.")}
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.token_type"][3] == 6  # <0x00> is a BYTE token
    _, loaded_tokenizer = load_gguf(path)
    for text in PROMPTS + ["h\u00e9llo w\u00f6rld \U0001f600"]:
        assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
