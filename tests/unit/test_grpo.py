"""The GRPO recipe end to end on a tiny random Llama: a trivially learnable reward rises, files, what changed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_jsonl
from tuneforge.config import build_config
from tuneforge.errors import UserError
from tuneforge.recipes.grpo import train
from tuneforge.rewards import exact_match, json_fields, json_format, resolve_reward

LETTERS = set("abcdefghijklmnopqrstuvwxyz")


def letter_fraction(prompt_messages, completion, reference):
    """Fraction of the completion's words that are single letters: ~27% for a random policy, learnable to 100%."""
    words = completion.split()
    return sum(w in LETTERS for w in words) / len(words) if words else 0.0


@pytest.fixture(scope="module")
def peaked_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with 5x larger (tied) embeddings. At the random init's scale (std 0.02, RMS-normed hidden
    of size 32) every logit is within about +-0.6, so no LoRA update can make the sampling distribution
    peaked; a reward would then rise only very slowly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.model.embed_tokens.weight.data *= 5
    folder = tmp_path_factory.mktemp("peaked-llama")
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_mean_reward_rises_and_only_lora_changes(tmp_path, peaked_model_dir):
    tiny_model_dir = peaked_model_dir
    rows = [{"messages": [{"role": "user", "content": f"what is {c}"}]} for c in "abcdefghijklmnopqrst"]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "grpo"
    config = build_config({"data": str(data), "model": str(tiny_model_dir), "output": str(out), "method": "grpo",
                           "reward": "tests:unused", "max_steps": 12, "batch_size": 4, "group_size": 8,
                           "max_new_tokens": 6, "learning_rate": 5e-2, "lr_schedule": "constant", "validation_split": 0.2,
                           "eval_every": 12})
    summary = train(config, reward_fn=letter_fraction)
    for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "summary.json", "grpo.png"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["type"] == "train"]
    for key in ("reward", "kl", "completion_length", "loss"):
        assert key in train_records[0], key
    first, last = train_records[:3], train_records[-3:]
    assert sum(r["reward"] for r in last) / 3 > sum(r["reward"] for r in first) / 3 + 0.1
    assert summary["final_valid_reward"] > summary["initial_valid_reward"]
    assert train_records[-1]["kl"] > 0 and summary["method"] == "grpo"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    for name, value in peft_model.get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, original[name.replace(".base_layer", "")]), name
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_builtin_rewards():
    prompt = [{"role": "user", "content": "x"}]
    assert exact_match(prompt, ' {"a":1} ', '{"a":1}') == 1.0 and exact_match(prompt, '{"a": 1}', '{"a":1}') == 0.0
    assert json_format(prompt, '{"a": 1}', None) == 1.0 and json_format(prompt, "{'a': 1}", None) == 0.0
    assert json_fields(prompt, '{"a":1,"b":3}', '{"a":1,"b":2}') == 0.5 and json_fields(prompt, "nope", '{"a":1}') == 0.0
    assert resolve_reward("exact_match") is exact_match
    assert resolve_reward("tuneforge.rewards:json_format") is json_format


def test_cli_flags_reach_the_config_and_grpo_needs_one_reward():
    from tuneforge.cli import build_parser
    from tuneforge.commands.train import train_config_from_args
    from tuneforge.errors import UserError

    args = build_parser().parse_args(["train", "--method", "grpo", "--data", "p.jsonl", "--reward", "exact_match", "group_size=8"])
    config = train_config_from_args(args)
    assert config.reward == "exact_match" and config.group_size == 8 and config.reward_model is None
    for flags in ([], ["--reward", "exact_match", "--reward-model", "runs/rm"]):
        with pytest.raises(UserError, match="exactly one of --reward"):
            train_config_from_args(build_parser().parse_args(["train", "--method", "grpo", "--data", "p.jsonl", *flags]))
    with pytest.raises(UserError, match="loss_type"):
        train_config_from_args(build_parser().parse_args(["train", "--method", "dpo", "--data", "p.jsonl", "loss_type=kto"]))


def test_grpo_resumed_from_a_checkpoint_ends_where_an_uninterrupted_run_does(tmp_path, peaked_model_dir):
    """The checkpoint carries the sampler's generator and the prompts still to come in this pass, so the
    resumed run samples the same completions: its adapter and logged rewards equal the straight run's."""
    rows = [{"messages": [{"role": "user", "content": f"what is {c}"}]} for c in "abcdefghij"]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    common = {"data": str(data), "model": str(peaked_model_dir), "method": "grpo", "reward": "tests:unused",
              "max_steps": 6, "batch_size": 3, "group_size": 4, "max_new_tokens": 4, "learning_rate": 5e-2,
              "dtype": "float32", "seed": 2}
    train(build_config({**common, "output": str(tmp_path / "straight")}), reward_fn=letter_fraction)
    resumed = build_config({**common, "output": str(tmp_path / "resumed"), "save_every": 3})
    train(resumed, reward_fn=letter_fraction)
    step3 = tmp_path / "resumed" / "checkpoints" / "step-3"
    summary = train(build_config({**resumed.to_dict(), "resume": str(step3)}), reward_fn=letter_fraction)
    assert summary["resumed_from"] == str(step3) and summary["steps"] == 6

    def rewards(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [r["reward"] for r in map(json.loads, lines) if r["type"] == "train"]

    assert rewards("resumed") == rewards("straight") and len(rewards("straight")) == 6
    a = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_exact_match_reward_after_a_short_sft_raises_the_held_out_reward(tmp_path, peaked_model_dir):
    """The usual pipeline, SFT then RL, with the builtin exact_match reward: two SFT steps leave the policy
    rarely exactly right (greedy held-out reward 0); GRPO on sampled groups makes it exact on prompts it
    never trained on (the answer is always "yes", so it generalises to held-out letters)."""
    from tuneforge.recipes import sft

    letters = "abcdefghijklmnopqrstuvwxyz"

    def rows(chars):
        return [{"messages": [{"role": "user", "content": f"what is {c}"}, {"role": "assistant", "content": "yes"}]}
                for c in chars]

    data = write_jsonl(tmp_path / "train.jsonl", rows(letters[:20]))
    valid = write_jsonl(tmp_path / "valid.jsonl", rows(letters[20:]))
    common = {"data": str(data), "model": str(peaked_model_dir), "dtype": "float32", "seed": 1}
    sft.train(build_config({**common, "output": str(tmp_path / "sft"), "max_steps": 2, "batch_size": 4,
                            "learning_rate": 5e-3}))
    summary = train(build_config({**common, "output": str(tmp_path / "grpo"), "method": "grpo", "reward": "exact_match",
                                  "validation_data": str(valid), "init_adapter": str(tmp_path / "sft"),
                                  "max_steps": 12, "batch_size": 4, "group_size": 8, "max_new_tokens": 3,
                                  "learning_rate": 1e-2, "lr_schedule": "constant", "eval_every": 4}))
    records = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    sampled = [r["reward"] for r in records if r["type"] == "train"]
    assert sum(sampled[-3:]) / 3 > sum(sampled[:3]) / 3 + 0.2
    assert summary["initial_valid_reward"] <= 0.5 and summary["final_valid_reward"] == 1.0
    assert (tmp_path / "grpo" / "grpo.png").is_file()


def test_grpo_with_a_string_check_grader_file_reads_the_row_as_item(tmp_path, peaked_model_dir):
    """OpenAI reinforcement rows: messages ending in a user turn plus grading fields beside them. The grader
    rewards a completion containing the row's own `must_contain` letter, reachable only through `item`."""
    rows = [{"messages": [{"role": "user", "content": f"say {c}"}], "must_contain": "e", "row_id": i}
            for i, c in enumerate("abcdefghijklmnopqrst")]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    grader = {"type": "string_check", "name": "has_letter", "input": "{{ sample.output_text }}",
              "reference": "{{ item.must_contain }}", "operation": "ilike"}
    grader_file = tmp_path / "grader.json"
    grader_file.write_text(json.dumps(grader))
    out = tmp_path / "grpo"
    config = build_config({"data": str(data), "model": str(peaked_model_dir), "output": str(out), "method": "grpo",
                           "grader": str(grader_file), "max_steps": 12, "batch_size": 4, "group_size": 8,
                           "max_new_tokens": 6, "learning_rate": 5e-2, "lr_schedule": "constant"})
    summary = train(config)
    assert summary["reward"] == f"grader {grader_file}"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in records if r["type"] == "train"]
    assert all(0.0 <= r <= 1.0 for r in rewards)
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards


def test_rl_prompts_keep_the_whole_row_as_item(tmp_path):
    from tuneforge.data.preference import load_rl_prompts

    row = {"messages": [{"role": "user", "content": "2+2?"}], "reference_answer": "4", "meta": {"level": 1}}
    prompts = load_rl_prompts(write_jsonl(tmp_path / "p.jsonl", [row]))
    assert prompts[0].item == row and prompts[0].messages == row["messages"] and prompts[0].reference is None


def test_a_bad_grader_file_is_refused_before_the_model_loads(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": "x"}]}] * 4)
    grader_file = tmp_path / "grader.json"
    grader_file.write_text(json.dumps({"type": "multi", "name": "m", "calculate_output": "a.b",
                                       "graders": {"a": {"type": "string_check", "name": "a", "input": "x",
                                                         "reference": "y", "operation": "eq"}}}))
    config = build_config({"data": str(data), "model": "no-such-model-anywhere", "method": "grpo",
                           "grader": str(grader_file), "output": str(tmp_path / "out")})
    with pytest.raises(UserError, match="grader.calculate_output"):
        train(config)
    with pytest.raises(UserError, match="exactly one of --reward"):
        build_config({"data": str(data), "method": "grpo", "grader": str(grader_file), "reward": "exact_match"})
