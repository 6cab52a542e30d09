"""The vocabulary of `tuneforge validate`: every finding code with its severity, meaning and fix.

    tuneforge validate train.jsonl --json      # each finding: {"line", "code", "message", "where", "fix"}

`CODES` is the one table of codes: readers.py, row_checks.py and validate.py report them, docs/data.md
renders the table (a test checks the two agree), `Finding.severity` reads it, and the report prints each
code's fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.data.readers import Row, describe

MIN_EXAMPLES = 10
SHORT_ANSWER_CHARS = 3

# code -> (severity, meaning, how to fix). docs/data.md renders this table; tests check they agree.
CODES: dict[str, tuple[str, str, str]] = {
    "invalid_json": ("error", "the line (or the JSON file) is not valid JSON, or not UTF-8",
                     "JSONL: exactly one JSON object per line; a JSON file: fix the syntax where the message says"),
    "not_object": ("error", "the line is JSON but not an object", "wrap the example in {...}"),
    "unknown_format": ("error", "the object has none of the known shapes",
                       "use one of the formats in docs/data.md, e.g. {\"messages\": [...]}, or map your own fields "
                       "onto one: --columns prompt:question,completion:answer (train: columns=...)"),
    "missing_field": ("error", "a field the row's format needs is missing", "add it (docs/data.md lists each format's fields)"),
    "wrong_method": ("error", "a preference row in an SFT file", "train it with --method dpo, or convert it to messages"),
    "bad_prompt_row": ("error", "a grpo prompt row is not a conversation ending in a user message",
                       "end 'messages' with the user's turn (one reference assistant answer may follow)"),
    "missing_messages": ("error", "'messages' is missing, not a list, or empty", "give a non-empty list of messages"),
    "bad_message": ("error", "a message is not an object", "each message is {\"role\": ..., \"content\": ...}"),
    "bad_role": ("error", "a role other than system, user, assistant, tool", "fix the role name"),
    "bad_role_order": ("error", "system not first, or a tool message without a preceding assistant tool call",
                       "put the system message first; tool messages follow an assistant message with tool_calls"),
    "bad_content": ("error", "content is not a string or a list of text parts",
                    "use a string, or [{\"type\": \"text\", \"text\": ...}]"),
    "bad_weight": ("error", "an assistant 'weight' other than 0 or 1", "use 0 (not trained) or 1 (trained)"),
    "no_trained_turn": ("error", "no assistant message with weight 1", "add an assistant answer, or set its weight to 1"),
    "bad_tools": ("error", "'tools' is not a list of function definitions",
                  "use [{\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": {...}}}]"),
    "bad_tool_calls": ("error", "an assistant 'tool_calls' entry is malformed",
                       "use [{\"id\": ..., \"type\": \"function\", \"function\": {\"name\": ..., \"arguments\": \"{...}\"}}]"),
    "bad_dpo_row": ("error", "not an OpenAI DPO row nor prompt/chosen/rejected",
                    "use {\"input\": {\"messages\": [...]}, \"preferred_output\": [one assistant message], "
                    "\"non_preferred_output\": [one assistant message]}"),
    "template_error": ("error", "the model's chat template refuses the conversation", "reorder the messages as the model expects"),
    "template_ignores_tools": ("error", "rows have tools or tool calls, but the chat template leaves them out (or "
                               "fails on them), so the model would never see the tools", "train with "
                               "chat_template=chatml-tools (validate --chat-template chatml-tools) or a Jinja "
                               "template of your own that renders tools and tool_calls"),
    "template_not_prefix_stable": ("error", "the chat template changes a turn's prompt once its answer follows", "use single-turn examples or another model"),
    "no_trained_tokens": ("error", "nothing is trained after rendering and truncation",
                          "shorten the prompt or raise --max-length"),
    "end_of_turn_not_trained": ("error", "the end-of-turn token of a trained answer is not trained: the model would "
                                "never learn to stop", "use a model whose chat template closes assistant turns"),
    "too_few_examples": ("error", f"fewer than {MIN_EXAMPLES} examples", f"give at least {MIN_EXAMPLES} examples"),
    "bad_cells": ("error", "a CSV/TSV row has more or fewer cells than the header has columns, or is unreadable",
                  "quote every cell that holds the delimiter, a quote or a line break"),
    "unreadable_file": ("error", "the file cannot be read as what it is (Parquet, a datasets folder)",
                        "write the file again; check it is complete"),
    "container_mismatch": ("warning", "the content is another container than the file's name says (a CSV or a JSON "
                           "array named .jsonl)", "rename the file, or write JSONL: tuneforge convert FILE OUT.jsonl"),
    "too_long": ("warning", "the example is longer than --max-length; its end will be cut",
                 "shorten it, split it, or raise --max-length"),
    "duplicate": ("warning", "the same example appears earlier", "tuneforge dedup FILE --output OUT"),
    "near_duplicate": ("warning", "the same words as an earlier example (case, punctuation, spacing aside)",
                       "tuneforge dedup FILE --output OUT --near"),
    "train_validation_overlap": ("warning", "a validation example also appears in the training file",
                                 "tuneforge split, or remove it from one file"),
    "empty_answer": ("warning", "a trained assistant answer is empty", "write the answer, or set weight 0"),
    "short_answer": ("warning", f"a trained assistant answer has fewer than {SHORT_ANSWER_CHARS} characters",
                     "check the answer is complete"),
    "consecutive_same_role": ("warning", "two user (or two assistant) messages in a row", "merge them, unless intended"),
    "imbalanced_labels": ("warning", "answers repeat and one answer dominates", "balance the classes or check the data"),
    "tokenizer_unavailable": ("warning", "the default model's tokenizer could not be loaded: token checks skipped",
                              "pass --model"),
}


@dataclass
class Finding:
    line: int | Row  # a JSONL line (1-based) or a readers.Row; 0 means the file as a whole
    code: str
    message: str
    file: str | None = None  # "validation" for findings in --validation-file

    @property
    def severity(self) -> str:
        return CODES[self.code][0]

    @property
    def fix(self) -> str:
        return CODES[self.code][2]

    def to_dict(self) -> dict:
        """`line` is the line number wherever there is one (null in Parquet and datasets rows, 0 for the file);
        `row` the 0-based row index in containers other than JSONL; `where` says it in words."""
        if isinstance(self.line, Row):
            out = {"line": self.line.line, "row": self.line.index}
        else:
            out = {"line": self.line}
        out.update(code=self.code, message=self.message, where=describe(self.line), fix=self.fix)
        if self.file:
            out["file"] = self.file
        return out
