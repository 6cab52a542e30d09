"""A Hugging Face fast tokenizer as GGUF `tokenizer.ggml.*` metadata that llama.cpp tokenizes identically.

    meta = vocab_metadata(tokenizer, config.vocab_size)      # used by gguf_writer.write_gguf

Two kinds of vocabulary are written, the two llama.cpp implements for BPE models:

- byte-level BPE (SmolLM2, Llama 3, Qwen2/3, GPT-2 style) as `tokenizer.ggml.model = gpt2`, with the merges
  and `tokenizer.ggml.pre`, the name of the split rule llama.cpp applies before merging;
- byte-fallback BPE (Llama 2, Mistral, Gemma, Phi-3: sentencepiece models) as `llama`, with scores that
  rank tokens in merge order and `<0xNN>` pieces typed BYTE.

`tokenizer.ggml.pre` is what broke llama.cpp loading before: llama.cpp knows a fixed list of names and
refuses any other. It is identified the way llama.cpp's own `convert_hf_to_gguf.py` does it -- a SHA-256
of the token ids the tokenizer gives for a fixed check text, looked up among known tokenizers -- and,
for a vocabulary of its own (a newly trained tokenizer has an unknown hash), by how the tokenizer's
pre-tokenizer splits that text compared with each split rule llama.cpp implements. A tokenizer matching
neither is refused: writing a wrong name would load and then tokenize differently, silently.
"""

from __future__ import annotations

import hashlib
import json

from tuneforge.errors import UserError

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The check text of llama.cpp's convert_hf_to_gguf.py (`get_vocab_base_pre`): whitespace runs, emoji,
# digit runs, several scripts, contractions in mixed case -- everything split rules disagree on.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(token ids of CHECK_TEXT)) -> tokenizer.ggml.pre, for the tokenizer families tuneforge
# trains (the values are llama.cpp's, from convert_hf_to_gguf.py of the llama.cpp the tests run).
KNOWN_VOCAB_HASHES = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3, 3.1, 3.2
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # Llama 3 fine-tunes
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5, Qwen2, 2.5, 3
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 embedding
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",  # Phi-4 and others
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
}

# The split rules llama.cpp applies for some `tokenizer.ggml.pre` values (src/llama-vocab.cpp), as the
# regular expressions tokenizer.json files carry. Applied one after another, each splitting the pieces
# of the one before and keeping both matches and the text between them, as llama.cpp does.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
SPLIT_RULES = {
    "gpt-2": (GPT2_SPLIT,),
    "llama-bpe": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+",
    ),
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)"
        r"|\s+",
    ),
    "smollm": (r"\p{N}", GPT2_SPLIT),
    "tekken": (
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
        r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+",
    ),
    "gpt-4o": (
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
}


def vocab_hash(tokenizer) -> str:
    """llama.cpp's fingerprint of a tokenizer: sha256 of the printed id list of CHECK_TEXT."""
    return hashlib.sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()


def pieces_of(tokenizer_json: dict, text: str) -> list[str]:
    """How the tokenizer cuts `text` before its BPE merges (normalizer, then pre-tokenizer)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(json.dumps(tokenizer_json))
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    if backend.pre_tokenizer is None:
        return [text]
    return [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


def llama_cpp_pieces(rules: tuple[str, ...], text: str) -> list[str]:
    """The pieces llama.cpp's BPE tokenizer makes of `text` with these split rules, in byte-level form."""
    from tokenizers import Regex, pre_tokenizers

    steps = [pre_tokenizers.Split(Regex(rule), behavior="isolated") for rule in rules]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return [piece for piece, _ in pre_tokenizers.Sequence(steps).pre_tokenize_str(text)]


def pre_tokenizer_name(tokenizer, tokenizer_json: dict) -> str:
    """The `tokenizer.ggml.pre` llama.cpp needs for this byte-level BPE tokenizer, or a UserError."""
    fingerprint = vocab_hash(tokenizer)
    if fingerprint in KNOWN_VOCAB_HASHES:
        return KNOWN_VOCAB_HASHES[fingerprint]
    ours = pieces_of(tokenizer_json, CHECK_TEXT)
    for name, rules in SPLIT_RULES.items():
        if llama_cpp_pieces(rules, CHECK_TEXT) == ours:
            return name
    raise UserError(
        f"GGUF export: this tokenizer splits text before BPE in a way llama.cpp does not implement (its "
        f"check-text hash {fingerprint[:16]}... is unknown and its split matches none of "
        f"{', '.join(SPLIT_RULES)}); a GGUF would tokenize differently in llama.cpp. Use --format hf and "
        "llama.cpp's convert_hf_to_gguf.py, which lists more tokenizers"
    )


def merge_ranked_scores(by_id: dict[int, str], merges: list[str], size: int) -> list[float]:
    """Sentencepiece-style scores: llama.cpp's SPM tokenizer merges the pair with the highest score.

    A token made by merge number r scores -r, so llama.cpp merges in the order HF's BPE does; tokens no
    merge makes (characters, bytes, specials) score below every merged token.
    """
    made_by = {}
    for rank, merge in enumerate(merges):
        made_by.setdefault(merge.replace(" ", ""), rank)
    floor = -float(len(merges))
    return [-float(made_by[by_id[i]]) if by_id.get(i) in made_by else floor - i for i in range(size)]


def prepends_word_boundary(tokenizer_json: dict) -> bool:
    """Whether a sentencepiece-style tokenizer puts "▁" before the text (Llama 2, Mistral: yes; Gemma: no)."""

    def prepends(step: dict | None) -> bool:
        if not step:
            return False
        if step.get("type") == "Sequence":
            return any(prepends(s) for s in step.get("normalizers", step.get("pretokenizers", [])))
        if step.get("type") == "Prepend":
            return step.get("prepend") == "\u2581"
        return step.get("type") == "Metaspace" and step.get("prepend_scheme", "always") != "never"

    return prepends(tokenizer_json.get("normalizer")) or prepends(tokenizer_json.get("pre_tokenizer"))


def vocab_metadata(tokenizer, vocab_size: int) -> dict:
    """Everything `tokenizer.ggml.*` needs, from a fast tokenizer's tokenizer.json."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("GGUF export needs a fast tokenizer (tokenizer.json)")
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    if model.get("type") != "BPE":
        raise UserError(
            f"GGUF export supports byte-level BPE and sentencepiece-style BPE tokenizers; this one is "
            f"{model.get('type')}, which llama.cpp cannot represent. Use --format hf"
        )
    kind = "llama" if model.get("byte_fallback") else "gpt2"
    if kind == "gpt2" and "ByteLevel" not in json.dumps(backend.get("pre_tokenizer")):
        raise UserError("GGUF export: a BPE tokenizer without byte-level pre-tokenization is not supported; use --format hf")

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(by_id)} but the model's vocab_size is {vocab_size}")
    added = {entry["content"]: entry for entry in backend.get("added_tokens", [])}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:  # embedding rows past the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
            continue
        tokens.append(token)
        if kind == "llama" and token.startswith("<0x") and len(token) == 6:  # byte-fallback pieces
            types.append(BYTE)
        elif token in added:
            types.append(CONTROL if added[token].get("special") else USER_DEFINED)
        elif token == model.get("unk_token"):
            types.append(UNKNOWN)
        else:
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    probe = tokenizer("a")["input_ids"]
    meta = {
        "model": kind,
        "pre": pre_tokenizer_name(tokenizer, backend) if kind == "gpt2" else "default",
        "tokens": tokens,
        "types": types,
        "scores": merge_ranked_scores(by_id, merges, vocab_size) if kind == "llama" else None,
        # llama.cpp's sentencepiece path prepends "▁" itself unless told not to; HF does it in tokenizer.json.
        "add_space_prefix": kind == "llama" and prepends_word_boundary(backend),
        "merges": merges,
        "add_bos": tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id,
        "add_eos": tokenizer.eos_token_id is not None and bool(probe) and probe[-1] == tokenizer.eos_token_id,
        "chat_template": tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    }
    for name in ("bos", "eos", "unk", "pad"):
        meta[f"{name}_id"] = getattr(tokenizer, f"{name}_token_id", None)
    return meta


def write_vocab(writer, meta: dict) -> None:
    writer.add_tokenizer_model(meta["model"])
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    if meta["scores"] is not None:
        writer.add_token_scores(meta["scores"])
    if meta["merges"]:
        writer.add_token_merges(meta["merges"])
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if meta[f"{name}_id"] is not None:
            add(meta[f"{name}_id"])
    writer.add_add_bos_token(meta["add_bos"])
    writer.add_add_eos_token(meta["add_eos"])
    writer.add_add_space_prefix(meta["add_space_prefix"])
    if meta["chat_template"]:
        writer.add_chat_template(meta["chat_template"])
