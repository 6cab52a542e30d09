"""`tuneforge preview`: the rendered template token by token, trained tokens marked (ANSI, ⟦…⟧ or HTML)."""

from __future__ import annotations

from tests.conftest import write_jsonl
from tuneforge.cli import main
from tuneforge.data.preview import format_html, format_text, preview_examples

ROWS = [{"messages": [{"role": "system", "content": "you are helpful"}, {"role": "user", "content": "what is a"},
                      {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no", "weight": 0},
                      {"role": "user", "content": "please"}, {"role": "assistant", "content": "yes"}]}]


def test_only_answers_and_end_of_turn_are_marked(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    first, second = preview_examples(path, tiny_tokenizer, n=2)
    assert first.n_trained == 2  # "b" and <|im_end|>
    text = format_text(first, color=False)
    assert "⟦b<|im_end|>⟧" in text and text.count("⟦") == 1
    assert "<|im_start|>assistant↵" in text  # the prompt the model answers after is visible, untrained
    second_text = format_text(second, color=False)
    assert second_text.count("⟦") == 1 and "⟦yes<|im_end|>⟧" in second_text  # weight 0 turn not trained
    assert "|" in format_text(first, color=False, show_boundaries=True).replace("<|im_start|>", "").replace("<|im_end|>", "")


def test_ansi_and_html(tmp_path, tiny_tokenizer):
    (example,) = preview_examples(write_jsonl(tmp_path / "d.jsonl", ROWS[:1]), tiny_tokenizer, n=1)
    coloured = format_text(example, color=True)
    assert "\x1b[30;4" in coloured and "⟦" not in coloured
    page = format_html([example], "d.jsonl", "tiny")
    assert page.count('class="t y" title=') == 2 and page.startswith("<!doctype html>") and "<script" not in page


def test_preview_command(tmp_path, tiny_model_dir, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out_html = tmp_path / "p.html"
    assert main(["preview", str(path), "--n", "1", "--model", str(tiny_model_dir), "--html", str(out_html)]) == 0
    out = capsys.readouterr().out
    assert "line 1: " in out and "⟦b<|im_end|>⟧" in out and "line 2" not in out
    assert 'class="t y"' in out_html.read_text()


def test_preview_reads_other_containers_and_names_rows(tmp_path, tiny_tokenizer):
    from tests.unit.test_data_sources import write_container

    sharegpt = [{"conversations": [{"from": "human", "value": "what is a"}, {"from": "gpt", "value": "b"}]}] * 2
    (first, second) = preview_examples(write_container(tmp_path / "d.parquet", sharegpt, "parquet"), tiny_tokenizer, n=2)
    assert (first.title, second.title) == ("row 0", "row 1")
    assert "⟦b<|im_end|>⟧" in format_text(first, color=False)


def test_preview_json_lists_every_token_and_whether_it_is_trained(tmp_path, tiny_model_dir, tiny_tokenizer, capsys):
    import json

    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert main(["preview", str(path), "--n", "2", "--model", str(tiny_model_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # exactly one JSON object, no text report beside it
    first, second = report["examples"]
    assert (first["line"], first["row"], first["title"]) == (1, None, "line 1")
    expected = preview_examples(path, tiny_tokenizer, n=2)[0]
    assert [(t["text"], t["id"], t["trained"]) for t in first["tokens"]] == expected.pieces
    assert "".join(t["text"] for t in first["tokens"] if t["trained"]) == "b<|im_end|>"
    assert first["n_trained"] == 2 and first["n_tokens"] == len(first["tokens"])
    assert "".join(t["text"] for t in second["tokens"] if t["trained"]) == "yes<|im_end|>"  # weight-0 turn untrained
