"""`tuneforge validate`: every bad case has its exact line and stable code; a clean file passes with exact counts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import make_tokenizer, write_jsonl
from tuneforge.cli import main
from tuneforge.data.tokenize import tokenize_conversation
from tuneforge.data.validate import CODES, auto_epochs, validate_file

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def good(i: int) -> dict:
    """A distinct, clean chat row (distinct words, so no duplicate or near-duplicate warnings)."""
    return {"messages": [{"role": "user", "content": f"what is {LETTERS[i % 26]} {LETTERS[i // 26 % 26]}"},
                         {"role": "assistant", "content": f"the answer is {LETTERS[(i + 1) % 26]} {i}"}]}


def good_pair(i: int) -> dict:
    return {"input": {"messages": [{"role": "user", "content": f"what is {LETTERS[i % 26]} {i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"yes it is {i}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"no it is not {i}"}]}


def file_with(tmp_path: Path, bad, at_line: int = 3, n: int = 12, row=good, name="data.jsonl") -> Path:
    rows = [row(i) for i in range(n)]
    rows.insert(at_line - 1, bad)
    return write_jsonl(tmp_path / name, rows)


def findings(report, code):
    return [(f.line, f.code) for f in report.findings if f.code == code]


def assert_only_error(report, line: int, code: str):
    assert [(e.line, e.code) for e in report.errors] == [(line, code)], [e.to_dict() for e in report.errors]
    assert not report.ok


def msg(role, content="hello", **extra):
    return {"role": role, "content": content, **extra}


ROW_ERRORS = [
    ('{"messages": [', "invalid_json"),
    ("[1, 2, 3]", "not_object"),
    ('"just a string"', "not_object"),
    ({"text": "hello"}, "unknown_format"),
    ({"messages": []}, "missing_messages"),
    ({"messages": None}, "missing_messages"),
    ({"messages": ["hello", msg("user"), msg("assistant")]}, "bad_message"),
    ({"messages": [msg("robot"), msg("assistant")]}, "bad_role"),
    ({"messages": [msg("user"), msg("system"), msg("assistant")]}, "bad_role_order"),
    ({"messages": [msg("user"), msg("tool", tool_call_id="1"), msg("assistant")]}, "bad_role_order"),
    ({"messages": [msg("user", 5), msg("assistant")]}, "bad_content"),
    ({"messages": [msg("user", [{"type": "image_url", "image_url": "x"}]), msg("assistant")]}, "bad_content"),
    ({"messages": [msg("user"), {"role": "assistant"}]}, "bad_content"),
    ({"messages": [msg("user"), msg("assistant", weight=0)]}, "no_trained_turn"),
    ({"messages": [msg("user")]}, "no_trained_turn"),
    ({"messages": [msg("user"), msg("assistant", weight=2)]}, "bad_weight"),
    ({"messages": [msg("user"), msg("assistant", weight=True)]}, "bad_weight"),
    ({"messages": [msg("user"), msg("assistant")], "tools": "search"}, "bad_tools"),
    ({"messages": [msg("user"), msg("assistant")], "tools": [{"type": "function", "function": {}}]}, "bad_tools"),
    ({"messages": [msg("user"), {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
                   msg("tool", tool_call_id="1"), msg("assistant")]}, "bad_tool_calls"),
    ({"prompt": 1, "completion": "x"}, "bad_content"),
    ('{"messages": [{"role": "user", "content": "\\ud800 hi"}, {"role": "assistant", "content": "yes it is"}]}', "bad_content"),
    (good_pair(99), "wrong_method"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "wrong_method"),
]


@pytest.mark.parametrize(("bad", "code"), ROW_ERRORS, ids=[f"{c}-{i}" for i, (_, c) in enumerate(ROW_ERRORS)])
def test_each_row_error_has_its_line_and_code(tmp_path, tiny_tokenizer, bad, code):
    path = file_with(tmp_path, bad, at_line=3)
    assert_only_error(validate_file(path, "sft", tiny_tokenizer), 3, code)
    # without a tokenizer the structural checks are the same
    assert_only_error(validate_file(path, "sft"), 3, code)


DPO_ERRORS = [
    ({**good_pair(99), "preferred_output": [msg("assistant"), msg("assistant")]}, "bad_dpo_row"),
    ({**good_pair(99), "non_preferred_output": [msg("user")]}, "bad_dpo_row"),
    ({**good_pair(99), "input": [msg("user")]}, "bad_dpo_row"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "bad_dpo_row"),
    ({"prompt": "p", "chosen": [msg("user", "a")], "rejected": "b"}, "bad_dpo_row"),  # an answer must be the assistant's
    ({"chosen": "a", "rejected": "b"}, "bad_dpo_row"),  # no prompt and no conversations to take it from
    ({"chosen": [msg("user", "p"), msg("assistant", "a")], "rejected": [msg("user", "q"), msg("assistant", "b")]},
     "bad_dpo_row"),  # implicit prompts that differ
    (good(99), "bad_dpo_row"),
    ({**good_pair(99), "input": {"messages": [msg("wizard")]}}, "bad_role"),
]


@pytest.mark.parametrize(("bad", "code"), DPO_ERRORS, ids=[f"{c}-{i}" for i, (_, c) in enumerate(DPO_ERRORS)])
def test_dpo_row_errors(tmp_path, tiny_tokenizer, bad, code):
    path = file_with(tmp_path, bad, at_line=5, row=good_pair)
    assert_only_error(validate_file(path, "dpo", tiny_tokenizer), 5, code)


def test_clean_dpo_file_in_both_shapes(tmp_path, tiny_tokenizer):
    rows = [good_pair(i) for i in range(6)] + [{"prompt": f"what is {i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(6)]
    report = validate_file(write_jsonl(tmp_path / "p.jsonl", rows), "reward", tiny_tokenizer)
    assert report.ok and report.n_examples == 12 and report.n_trained_tokens > 0


def test_every_pair_layout_reads_as_the_same_pair(tmp_path, tiny_tokenizer):
    """Plain strings, answers as one assistant message (alone or in a list), and the implicit-prompt layout
    (two whole conversations) are one pair: same prompt messages, same answers, same tokens."""
    from tuneforge.data.formats import row_to_preference_pair

    prompt = [msg("system", "be brief"), msg("user", "what is 3")]
    layouts = [
        {"input": {"messages": prompt}, "preferred_output": [msg("assistant", "yes 3")],
         "non_preferred_output": [msg("assistant", "no 3")]},
        {"prompt": prompt, "chosen": "yes 3", "rejected": "no 3"},
        {"prompt": prompt, "chosen": [msg("assistant", "yes 3")], "rejected": [msg("assistant", "no 3")]},
        {"prompt": prompt, "chosen": msg("assistant", "yes 3"), "rejected": msg("assistant", "no 3")},
        {"chosen": [*prompt, msg("assistant", "yes 3")], "rejected": [*prompt, msg("assistant", "no 3")]},
    ]
    pairs = [row_to_preference_pair(row) for row in layouts]
    for pair in pairs:
        assert (pair.prompt, pair.chosen, pair.rejected) == (pairs[0].prompt, "yes 3", "no 3")
    report = validate_file(write_jsonl(tmp_path / "layouts.jsonl", layouts), "dpo", tiny_tokenizer, min_examples=1)
    assert report.ok and report.n_examples == 5
    from tuneforge.data.preference import tokenize_pair

    tokenized = [tokenize_pair(tiny_tokenizer, pair, 2048) for pair in pairs]
    for one in tokenized:
        assert one.chosen.input_ids == tokenized[0].chosen.input_ids
        assert one.rejected.labels == tokenized[0].rejected.labels


def test_clean_file_passes_with_exact_counts(tmp_path, tiny_tokenizer):
    rows = [good(i) for i in range(30)]
    rows[4]["messages"].insert(0, msg("system", "you are helpful"))
    report = validate_file(write_jsonl(tmp_path / "clean.jsonl", rows), "sft", tiny_tokenizer)
    assert report.ok and report.findings == []
    examples = [tokenize_conversation(tiny_tokenizer, r["messages"]) for r in rows]
    lengths = [len(e.input_ids) for e in examples]
    out = report.to_dict()
    assert out["n_examples"] == 30
    assert out["n_tokens"] == sum(lengths)
    assert out["n_trained_tokens"] == sum(e.n_trained for e in examples)
    assert out["tokens_per_example"]["min"] == min(lengths) and out["tokens_per_example"]["max"] == max(lengths)
    assert out["auto_epochs"] == 3
    json.dumps(out)


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path, tiny_tokenizer):
    path = tmp_path / "gaps.jsonl"
    lines = [json.dumps(good(i)) for i in range(12)]
    lines.insert(2, "")
    lines.insert(3, "   ")
    lines.insert(6, "{oops")
    path.write_text("\n".join(lines) + "\n")
    report = validate_file(path, "sft", tiny_tokenizer)
    assert [(e.line, e.code) for e in report.errors] == [(7, "invalid_json")]
    assert report.n_examples == 13


def test_bad_utf8_is_invalid_json(tmp_path, tiny_tokenizer):
    path = file_with(tmp_path, "placeholder", at_line=2)
    data = path.read_bytes().replace(b'"placeholder"', b'{"messages": "\xff\xfe"}')
    path.write_bytes(data)
    assert_only_error(validate_file(path, "sft", tiny_tokenizer), 2, "invalid_json")


def test_every_problem_in_a_row_is_reported(tmp_path):
    bad = {"messages": [msg("robot"), msg("user", 5), msg("assistant", weight=7), msg("system")]}
    report = validate_file(file_with(tmp_path, bad, at_line=1), "sft")
    assert {e.code for e in report.errors} == {"bad_role", "bad_content", "bad_weight", "bad_role_order"}
    assert {e.line for e in report.errors} == {1}


def test_too_few_examples_is_a_file_level_error(tmp_path, tiny_tokenizer):
    report = validate_file(write_jsonl(tmp_path / "small.jsonl", [good(i) for i in range(9)]), "sft", tiny_tokenizer)
    assert_only_error(report, 0, "too_few_examples")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert_only_error(validate_file(empty, "sft"), 0, "too_few_examples")


def test_no_trained_tokens_after_truncation(tmp_path, tiny_tokenizer):
    long_prompt = {"messages": [msg("user", " ".join(["hello"] * 40)), msg("assistant", "yes it is")]}
    report = validate_file(file_with(tmp_path, long_prompt, at_line=4), "sft", tiny_tokenizer, max_length=20)
    assert [(e.line, e.code) for e in report.errors] == [(4, "no_trained_tokens")]
    assert (4, "too_long") in findings(report, "too_long")


def test_too_long_is_a_warning_with_tokens_cut(tmp_path, tiny_tokenizer):
    long_answer = {"messages": [msg("user", "hi"), msg("assistant", " ".join(["yes"] * 60))]}
    report = validate_file(file_with(tmp_path, long_answer, at_line=6), "sft", tiny_tokenizer, max_length=32)
    assert report.ok
    (warning,) = [w for w in report.warnings if w.code == "too_long"]
    full = len(tokenize_conversation(tiny_tokenizer, [msg("user", "hi"), msg("assistant", " ".join(["yes"] * 60))]).input_ids)
    assert warning.line == 6 and f"{full - 32} tokens would be cut" in warning.message


def test_end_of_turn_not_trained_is_an_error(tmp_path):
    """A template that closes a turn only when the next one starts never trains <|im_end|> after an answer."""
    tokenizer = make_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if not loop.first %}<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% endfor %}{% if add_generation_prompt %}{% if messages %}<|im_end|>\n{% endif %}<|im_start|>assistant\n{% endif %}"
    )
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [good(i) for i in range(12)]), "sft", tokenizer)
    assert findings(report, "end_of_turn_not_trained") == [(line, "end_of_turn_not_trained") for line in range(1, 13)]


def test_template_refusal_is_template_error(tmp_path):
    tokenizer = make_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' and loop.index0 > 1 %}{{ raise_exception('no multi-turn') }}"
        "{% endif %}{{ m['role'] + ': ' + m['content'] + '<|im_end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    multi = {"messages": [msg("user", "hi"), msg("assistant", "yes", weight=0), msg("user", "hi"), msg("assistant", "no")]}
    report = validate_file(file_with(tmp_path, multi, at_line=2), "sft", tokenizer)
    assert_only_error(report, 2, "template_error")


def test_duplicates_near_duplicates_and_overlap_are_warnings(tmp_path, tiny_tokenizer):
    rows = [good(i) for i in range(12)]
    rows.append(good(3))  # line 13: exact duplicate of line 4
    near = json.loads(json.dumps(good(5)))
    near["messages"][0]["content"] = "  What IS, " + near["messages"][0]["content"][8:] + "?"
    rows.append(near)  # line 14: near duplicate of line 6
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    valid = write_jsonl(tmp_path / "valid.jsonl", [good(100), good(7)])
    report = validate_file(train, "sft", tiny_tokenizer, validation_file=valid)
    assert report.ok
    got = {(w.line, w.code, w.file) for w in report.warnings}
    assert got == {(13, "duplicate", None), (14, "near_duplicate", None), (2, "train_validation_overlap", "validation")}
    assert "line 4" in next(w.message for w in report.warnings if w.code == "duplicate")


def test_validation_file_errors_carry_the_file(tmp_path, tiny_tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", [good(i) for i in range(12)])
    valid = write_jsonl(tmp_path / "valid.jsonl", [good(50), {"messages": []}])
    report = validate_file(train, "sft", tiny_tokenizer, validation_file=valid)
    assert [e.to_dict() for e in report.errors] == [
        {"line": 2, "code": "missing_messages", "message": "'messages' must be a non-empty list of messages",
         "where": "line 2", "fix": CODES["missing_messages"][2], "file": "validation"}]


def test_short_empty_answers_and_role_repeats_are_warnings(tmp_path, tiny_tokenizer):
    rows = [good(i) for i in range(12)]
    rows[1] = {"messages": [msg("user", "hi"), msg("assistant", "")]}
    rows[2] = {"messages": [msg("user", "hi hi"), msg("assistant", "ok")]}
    rows[3] = {"messages": [msg("user", "a"), msg("user", "b"), msg("assistant", "the answer")]}
    report = validate_file(write_jsonl(tmp_path / "w.jsonl", rows), "sft", tiny_tokenizer)
    assert report.ok
    assert {(w.line, w.code) for w in report.warnings} == {(2, "empty_answer"), (3, "short_answer"), (4, "consecutive_same_role")}


def test_imbalanced_labels(tmp_path, tiny_tokenizer):
    rows = [{"messages": [msg("user", f"is {LETTERS[i % 26]} {i} high"), msg("assistant", "high" if i % 10 else "low")]}
            for i in range(40)]
    report = validate_file(write_jsonl(tmp_path / "labels.jsonl", rows), "sft", tiny_tokenizer)
    assert report.ok and findings(report, "imbalanced_labels") == [(0, "imbalanced_labels")]
    assert "90%" in report.warnings[0].message
    balanced = [{"messages": [msg("user", f"is {LETTERS[i % 26]} {i} high"), msg("assistant", "high" if i % 2 else "low")]}
                for i in range(40)]
    assert not validate_file(write_jsonl(tmp_path / "b.jsonl", balanced), "sft", tiny_tokenizer).warnings


def test_tool_calls_conversation_is_valid(tmp_path, tiny_tokenizer):
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"order\": 1}"}}
    row = {"messages": [msg("user", "hi"), {"role": "assistant", "content": None, "tool_calls": [call]},
                        msg("tool", "shipping", tool_call_id="c1"), msg("assistant", "it is shipping")],
           "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}
    report = validate_file(file_with(tmp_path, row, at_line=1), "sft")
    assert report.ok, [e.to_dict() for e in report.errors]


def test_findings_per_code_are_capped_but_counted(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("{bad\n" * 200)
    report = validate_file(path, "sft")
    assert report.counts["invalid_json"] == 200 and len(report.errors) == 50
    assert report.to_dict()["finding_counts"]["invalid_json"] == 200


@pytest.mark.parametrize(("n", "epochs"), [(1, 25), (4, 25), (10, 10), (20, 5), (33, 3), (34, 3), (400, 3),
                                            (8333, 3), (8334, 2), (12500, 2), (12501, 1), (100000, 1), (0, None)])
def test_auto_epochs_follows_openais_rule(n, epochs):
    """n_epochs=3 unless n*3 < 100 (then 100 // n, at most 25) or n*3 > 25000 (then 25000 // n, at least 1)."""
    assert auto_epochs(n) == epochs


def test_every_code_is_documented_in_docs_data_md():
    """docs/data.md's table is CODES row for row: severity, meaning and the fix the report prints."""
    text = (Path(__file__).parents[2] / "docs" / "data.md").read_text()
    rows = {code: (severity, meaning, fix) for code, severity, meaning, fix in
            re.findall(r"^\| `([a-z_]+)` \| (error|warning) \| (.*) \| (.*) \|$", text, flags=re.M)}
    assert rows == CODES


# ---- the command --------------------------------------------------------------------------------------


def run_cli(capsys, *argv):
    code = main(["validate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_is_one_object_and_exit_codes(tmp_path, tiny_model_dir, capsys):
    clean = write_jsonl(tmp_path / "clean.jsonl", [good(i) for i in range(12)])
    code, out, _ = run_cli(capsys, clean, "--model", tiny_model_dir, "--json", "--no-estimate")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["n_examples"] == 12 and report["errors"] == []
    for key in ("n_tokens", "n_trained_tokens", "warnings", "estimate", "tokens_per_example", "auto_epochs"):
        assert key in report

    assert (report["container"], report["positions"], report["format"], report["formats"]) == ("jsonl", "line", "chat",
                                                                                              {"chat": 12})

    bad = file_with(tmp_path, {"messages": []}, at_line=7, name="bad.jsonl")
    code, out, _ = run_cli(capsys, bad, "--model", tiny_model_dir, "--json", "--no-estimate")
    assert code == 1 and json.loads(out)["errors"] == [
        {"line": 7, "code": "missing_messages", "message": "'messages' must be a non-empty list of messages",
         "where": "line 7", "fix": "give a non-empty list of messages"}]

    code, out, err = run_cli(capsys, tmp_path / "missing.jsonl", "--json")
    assert code == 2 and out == "" and "file not found" in err

    code, out, _ = run_cli(capsys, bad, "--model", tiny_model_dir, "--no-estimate")
    assert code == 1 and "  error: line 7: " in out and "[missing_messages]" in out
    assert "  fix [missing_messages]: give a non-empty list of messages" in out.splitlines()


def test_the_fix_of_each_code_is_printed_once(tmp_path, tiny_model_dir, capsys):
    rows = [good(i) for i in range(12)]
    rows[2] = rows[5] = {"messages": []}
    rows[8] = {"messages": [msg("user"), msg("assistant", weight=5)]}
    code, out, _ = run_cli(capsys, write_jsonl(tmp_path / "bad.jsonl", rows), "--model", tiny_model_dir)
    fixes = [line for line in out.splitlines() if line.startswith("  fix")]
    assert code == 1 and fixes == [f"  fix [{c}]: {CODES[c][2]}" for c in ("missing_messages", "bad_weight", "duplicate")]


def test_plain_validate_loads_no_model_weights_and_estimates_nothing(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Before any compute: the default answers from the tokenizer alone; --no-estimate stays accepted."""
    import tuneforge.trainable

    monkeypatch.setattr(tuneforge.trainable, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    clean = write_jsonl(tmp_path / "clean.jsonl", [good(i) for i in range(12)])
    for extra in ([], ["--no-estimate"]):
        code, out, _ = run_cli(capsys, clean, "--model", tiny_model_dir, "--json", *extra)
        assert code == 0 and json.loads(out)["estimate"] == {}
    code, out, _ = run_cli(capsys, clean, "--model", tiny_model_dir)
    assert "not estimated (--estimate loads the model" in out
    with pytest.raises(SystemExit) as stop:
        run_cli(capsys, clean, "--estimate", "--no-estimate")
    assert stop.value.code == 2


def test_the_service_command_line_still_works(tmp_path):
    """tuneforge/service/file_validation.py runs `validate FILE --json --no-estimate --method M --min-examples N`."""
    import sys

    from tuneforge.service.file_validation import run_validator

    clean = write_jsonl(tmp_path / "file-abc", [good(i) for i in range(12)])  # stored uploads have no suffix
    report, problem = run_validator([sys.executable, "-m", "tuneforge", "validate"], clean, method="sft",
                                    param="training_file")
    assert problem is None and report["ok"] and report["n_examples"] == 12 and report["estimate"] == {}


def test_cli_estimate_is_measured_on_the_model(tmp_path, tiny_model_dir, capsys):
    """--estimate times the run `train` would do: TrainConfig's epochs (3), not the 'auto' rule (8 for 12 rows)."""
    clean = write_jsonl(tmp_path / "clean.jsonl", [good(i) for i in range(12)])
    code, out, _ = run_cli(capsys, clean, "--model", tiny_model_dir, "--json", "--estimate")
    report = json.loads(out)
    assert code == 0 and report["auto_epochs"] == 8 and report["estimate"]["epochs"] == 3.0
    assert report["estimate"]["train_tokens"] == 3 * report["n_tokens"]
    code, out, _ = run_cli(capsys, clean, "--model", tiny_model_dir, "--json", "--estimate", "--epochs", "2")
    estimate = json.loads(out)["estimate"]
    assert code == 0, estimate
    assert estimate["epochs"] == 2 and estimate["device"] in ("cpu", "cuda")
    assert len(estimate["calibration_step_seconds"]) == 2 and estimate["seconds_per_token"] > 0
    assert estimate["train_tokens"] == 2 * json.loads(out)["n_tokens"]
    assert estimate["train_seconds"] > 0 and estimate["peak_memory_mb"] > 0
    assert 0 < estimate["train_seconds_if_idle"] <= estimate["train_seconds"] or estimate["device"] == "cuda"


def test_train_refuses_an_invalid_file_before_loading_the_model(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import tuneforge.models

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(tuneforge.models, "load_base_model", no_model)
    bad = file_with(tmp_path, {"messages": [msg("user"), msg("assistant", weight=3)]}, at_line=5, name="bad.jsonl")
    code = main(["train", "--data", str(bad), "--model", str(tiny_model_dir), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "line 5: messages[1].weight must be 0 or 1, got 3 [bad_weight]" in err
    assert not (tmp_path / "run").exists()


# ---- split and dedup ------------------------------------------------------------------------------------


def test_split_is_deterministic_by_seed_and_loses_nothing(tmp_path, capsys):
    source = write_jsonl(tmp_path / "all.jsonl", [good(i) for i in range(50)])
    outs = []
    for attempt in range(2):
        a, b = tmp_path / f"t{attempt}.jsonl", tmp_path / f"v{attempt}.jsonl"
        assert main(["split", str(source), "--validation-fraction", "0.2", "--seed", "7", "--train-out", str(a),
                     "--validation-out", str(b)]) == 0
        outs.append((a.read_text(), b.read_text()))
    assert outs[0] == outs[1]
    train_lines, valid_lines = outs[0][0].splitlines(), outs[0][1].splitlines()
    assert len(valid_lines) == 10 and len(train_lines) == 40
    assert sorted(train_lines + valid_lines) == sorted(source.read_text().splitlines())
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["validation"] == 10


def test_dedup_exact_and_near(tmp_path, tiny_tokenizer):
    near = json.loads(json.dumps(good(2)))
    near["messages"][1]["content"] = near["messages"][1]["content"].upper() + "!"
    source = write_jsonl(tmp_path / "dups.jsonl", [good(i) for i in range(12)] + [good(1), near, "{broken"])
    assert main(["dedup", str(source), "--output", str(tmp_path / "exact.jsonl")]) == 0
    assert len((tmp_path / "exact.jsonl").read_text().splitlines()) == 14
    assert main(["dedup", str(source), "--output", str(tmp_path / "near.jsonl"), "--near"]) == 0
    cleaned = tmp_path / "near.jsonl"
    assert len(cleaned.read_text().splitlines()) == 13
    report = validate_file(cleaned, "sft", tiny_tokenizer)
    assert not findings(report, "duplicate") and not findings(report, "near_duplicate")


def test_train_accepts_a_valid_file_and_mentions_warnings(tmp_path, tiny_model_dir, qa_rows, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows)
    code = main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output", str(tmp_path / "run"),
                 "--max-steps", "1"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out.splitlines()[-1])["steps"] == 1
    assert "warning(s)" in err and "short_answer" in err  # one-letter answers: worth a look, not a refusal


def test_small_validation_file_passes_with_min_examples_1(tmp_path, tiny_model_dir, capsys):
    """Ten examples are the floor for a training file only; the service validates a validation file with 1."""
    small = write_jsonl(tmp_path / "valid.jsonl", [good(i) for i in range(3)])
    code, out, _ = run_cli(capsys, small, "--model", tiny_model_dir, "--json", "--no-estimate")
    assert code == 1 and [e["code"] for e in json.loads(out)["errors"]] == ["too_few_examples"]
    code, out, _ = run_cli(capsys, small, "--model", tiny_model_dir, "--json", "--no-estimate", "--min-examples", "1")
    assert code == 0 and json.loads(out)["ok"] is True


def test_grpo_accepts_openai_reinforcement_rows_and_names_a_prompt_that_does_not_end_with_the_user(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"What is {n} + {n}?"}], "reference_answer": str(2 * n),
             "meta": {"n": n}} for n in range(12)]
    rows.append({"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"},
                              {"role": "assistant", "content": "again"}]})
    report = validate_file(write_jsonl(tmp_path / "rl.jsonl", rows), "grpo").to_dict()
    assert report["method"] == "grpo"
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(13, "bad_prompt_row")]
    report = validate_file(write_jsonl(tmp_path / "ok.jsonl", rows[:-1]), "grpo").to_dict()
    assert report["ok"] and not report["errors"]
