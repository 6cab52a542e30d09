"""Export round trips on tiny random models: merge -> HF / GGUF / Ollama -> load back -> same logits.

The shared tiny fixture has a word-level tokenizer, which GGUF cannot describe; these tests build a tiny
byte-level BPE tokenizer (what SmolLM2, Llama-3 and Qwen2 use) with the `tokenizers` library instead.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tuneforge.errors import UserError

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "Where is my order? It shipped on Monday and should arrive soon.",
    "I want a refund for order 12345, the item arrived broken.",
    "category: shipping, priority: high. Hello, please help me!",
    '{"name": "Ana", "order": 987, "category": "refund"}',
] * 20
INIT, EMBED = 0.1, 1.0
PROMPTS = ["Where is my refund?", "order 42 arrived broken", '{"category": "shipping"}', "hello please help", "Monday"]


def make_bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def make_model_dir(folder, arch: str = "llama", tied: bool = True):
    """A 2-layer random Llama or Qwen2 (q/k/v biases).

    Random layers are chaotic: at large init a 0.4% weight error (q8_0) flips many near-tied argmaxes,
    which trained models do not do. Small layers over large embeddings give decided next tokens, as a
    trained model's are, while every layer still changes the logits.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = make_bpe_tokenizer()
    torch.manual_seed(0)
    common = dict(
        vocab_size=len(tokenizer) + 5,  # padded vocabulary: rows the tokenizer never produces
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
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
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt2"
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


def test_ollama_default_system_prompt_and_llama3(tiny_tokenizer):
    import copy

    from tuneforge.export.ollama import modelfile_text

    smol = copy.deepcopy(tiny_tokenizer)
    smol.chat_template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are SmolLM.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    assert 'SYSTEM """You are SmolLM."""' in modelfile_text(smol)

    llama3 = copy.deepcopy(tiny_tokenizer)
    llama3.chat_template = (
        "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
        "message['content'] + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    )
    text = modelfile_text(llama3)
    assert 'PARAMETER stop "<|eot_id|>"' in text and "SYSTEM" not in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"}]
    assert render_go_messages(template, messages) == llama3.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )

    other = copy.deepcopy(tiny_tokenizer)
    other.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(UserError, match="ChatML and Llama-3"):
        modelfile_text(other)


def test_sentencepiece_style_tokenizer_round_trips_as_llama_vocab(tmp_path):
    """A byte-fallback BPE (Llama-2 style) is written as `tokenizer.ggml.model = llama` with BYTE tokens."""
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tuneforge.export import export

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHATML
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
