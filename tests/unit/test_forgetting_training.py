"""Mitigations against forgetting inside `tuneforge train`: replay, early stopping, end-of-run eval and the gate."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tuneforge.config import build_config
from tuneforge.data.replay import load_replay_rows, replay_examples, sample_replay, text_example
from tuneforge.data.tokenize import IGNORE_INDEX
from tuneforge.recipes.sft import train


def test_replay_rows_mix_chat_and_text(tmp_path):
    path = tmp_path / "general.jsonl"
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path.write_text(json.dumps(chat) + "\n\nthe answer is yes\n")
    rows = load_replay_rows(str(path))
    assert len(rows) == 2 and rows[0].messages[-1]["content"] == "hello" and rows[1] == "the answer is yes"
    assert load_replay_rows("builtin:pydoc")[0]  # the replay half of pydoc topics, never the measured half


def test_sample_replay_count_seed_and_cycling():
    rows = list(range(3))
    picked = sample_replay(rows, n_train=10, ratio=0.5, seed=1)
    assert len(picked) == 5 and sorted(picked[:3]) == [0, 1, 2]  # every row once before any repeats
    assert picked == sample_replay(rows, n_train=10, ratio=0.5, seed=1)
    assert sample_replay(rows, n_train=10, ratio=0.0, seed=1) == []


def test_text_example_trains_every_token(tiny_tokenizer):
    example = text_example(tiny_tokenizer, "what is the answer yes", max_length=3)
    assert example.input_ids == tiny_tokenizer("what is the", add_special_tokens=False)["input_ids"]
    assert example.labels == example.input_ids and IGNORE_INDEX not in example.labels


def test_replay_examples_of_chat_rows_mask_the_prompt(tmp_path, tiny_tokenizer):
    path = write_jsonl(
        tmp_path / "g.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
    )
    (example,) = replay_examples(tiny_tokenizer, str(path), ratio=1.0, n_train=1, seed=0, max_length=64)
    assert IGNORE_INDEX in example.labels and example.n_trained >= 1
    assert replay_examples(tiny_tokenizer, None, 1.0, 5, 0, 64) == []


def run(tmp_path, tiny_model_dir, rows, **overrides):
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    config = build_config(
        {"data": str(data), "model": str(tiny_model_dir), "output": str(tmp_path / "out"), **overrides}
    )
    return train(config)


def test_train_with_replay_counts_replay_examples(tmp_path, tiny_model_dir, qa_rows):
    general = tmp_path / "general.txt"
    general.write_text("the answer is yes\nhello what is a b c\n")
    summary = run(
        tmp_path, tiny_model_dir, qa_rows[:8], replay=str(general), replay_ratio=0.5, max_steps=2, batch_size=4
    )
    assert summary["n_replay_examples"] == 4 and summary["n_examples"] == 12


def test_early_stopping_when_validation_loss_stops_improving(tmp_path, tiny_model_dir, qa_rows):
    """Validation asks for the previous letter while training teaches the next: valid loss soon rises."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    opposite = [
        {
            "messages": [
                {"role": "user", "content": f"what is {letters[i]}"},
                {"role": "assistant", "content": letters[i - 1]},
            ]
        }
        for i in range(1, 9)
    ]
    valid = write_jsonl(tmp_path / "valid.jsonl", opposite)
    summary = run(
        tmp_path,
        tiny_model_dir,
        qa_rows,
        validation_data=str(valid),
        max_steps=40,
        eval_every=1,
        learning_rate=3e-2,
        batch_size=4,
        early_stopping_patience=2,
    )
    assert summary["status"] == "early_stopped" and summary["steps"] < 40
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    valid_losses = [r["valid_loss"] for r in records if r["type"] == "valid"]
    assert min(valid_losses[:-2]) <= min(valid_losses[-2:])  # the last two evaluations brought no new best
    # The adapter kept is the best one: evaluating it again gives the best validation loss, not the last.
    assert summary["weights_from_step"] == summary["best_step"] < summary["steps"]
    assert summary["best_valid_loss"] == min(valid_losses)
    (tmp_path / "again").mkdir()
    again = run(
        tmp_path / "again",
        tiny_model_dir,
        qa_rows,
        validation_data=str(valid),
        max_steps=1,
        learning_rate=1e-12,
        batch_size=4,
        init_adapter=str(tmp_path / "out"),
    )
    assert again["final_valid_loss"] == pytest.approx(min(valid_losses), abs=1e-5)


def test_eval_data_and_forgetting_gate_land_in_summary(tmp_path, tiny_model_dir, qa_rows):
    test = write_jsonl(tmp_path / "test.jsonl", qa_rows[:3])
    summary = run(
        tmp_path,
        tiny_model_dir,
        qa_rows[:8],
        eval_data=str(test),
        max_forgetting=0.0,
        max_steps=3,
        learning_rate=3e-2,
        batch_size=4,
    )
    assert summary["eval"]["n"] == 3 and "exact_match" in summary["eval"]
    forgetting = summary["forgetting"]
    assert forgetting["mean_kl"] > 0 and isinstance(forgetting["passed"], bool)
    assert forgetting["passed"] == (forgetting["perplexity_change_pct"] <= 0.0)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["forgetting"]["passed"] == forgetting["passed"] and "eval" in saved


def test_self_replay_trains_on_the_models_own_finished_answers(tmp_path, tiny_model_dir, qa_rows, monkeypatch):
    """builtin:self asks the model as training starts; answers cut by the token budget are dropped. The
    generation is replaced by a recorder here (a tiny random model never finishes a sentence)."""
    import tuneforge.generation as generation
    from tuneforge.data.replay import read_general_prompts

    asked: list[str] = []

    def fake_generate_chat(model, tokenizer, conversations, max_new_tokens, **_):
        assert not model.training  # answered in eval mode, as at inference
        asked.extend(c[-1]["content"] for c in conversations)
        return [
            {"text": "yes a b" if i % 3 else "no", "finish_reason": "length" if i % 3 == 2 else "stop"}
            for i in range(len(conversations))
        ]

    monkeypatch.setattr(generation, "generate_chat", fake_generate_chat)
    summary = run(
        tmp_path, tiny_model_dir, qa_rows[:8], replay="builtin:self", replay_ratio=0.5, max_steps=2, batch_size=4,
        forgetting_guard="off",  # the guard would ask the model too
    )
    assert asked == read_general_prompts()
    assert summary["n_replay_examples"] == 4 and summary["n_examples"] == 12


def test_self_replay_refuses_when_no_answer_finishes(tmp_path, tiny_model_dir, qa_rows, monkeypatch):
    import tuneforge.generation as generation
    from tuneforge.errors import UserError

    monkeypatch.setattr(
        generation,
        "generate_chat",
        lambda model, tokenizer, conversations, **_: [
            {"text": "a b c", "finish_reason": "length"} for _ in conversations
        ],
    )
    with pytest.raises(UserError, match="finished none"):
        run(tmp_path, tiny_model_dir, qa_rows[:8], replay="builtin:self", replay_ratio=0.5, max_steps=1, batch_size=4)
