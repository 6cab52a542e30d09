"""Property: whatever the bytes, the validator reports and never raises (and the report is JSON)."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_tokenizer
from tuneforge.data.validate import CODES, validate_file

TOKENIZER = make_tokenizer()
TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates included
# Examples per test; the reliability run (docs/reliability.md) sets TUNEFORGE_FUZZ_EXAMPLES higher.
EXAMPLES = int(os.environ.get("TUNEFORGE_FUZZ_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "robot", None, 3])
contents = st.one_of(TEXT, st.none(), st.integers(),
                     st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]), "text": st.text(max_size=8)}), max_size=2))
messages = st.lists(
    st.fixed_dictionaries({"role": roles, "content": contents},
                          optional={"weight": st.sampled_from([0, 1, 2, True, None, "1"]),
                                    "tool_calls": json_values, "tool_call_id": st.text(max_size=3)}),
    max_size=5,
)
chat_rows = st.fixed_dictionaries({"messages": messages}, optional={"tools": json_values})
dpo_rows = st.fixed_dictionaries({"input": st.one_of(json_values, st.fixed_dictionaries({"messages": messages})),
                                  "preferred_output": st.one_of(messages, json_values),
                                  "non_preferred_output": st.one_of(messages, json_values)})
pair_rows = st.fixed_dictionaries({"prompt": st.one_of(TEXT, messages, json_values),
                                   "chosen": st.one_of(TEXT, json_values), "rejected": json_values})


def check(tmp_path, data: bytes, method: str, tokenizer=TOKENIZER, name: str = "fuzz.jsonl"):
    path = tmp_path / name
    path.write_bytes(data)
    report = validate_file(path, method, tokenizer, max_length=16)
    out = json.loads(json.dumps(report.to_dict()))
    for finding in out["errors"] + out["warnings"]:
        assert finding["code"] in CODES and finding["fix"] == CODES[finding["code"]][2]
        # a line number wherever the file has lines; only Parquet rows have none
        assert isinstance(finding["line"], int) or (name.endswith(".parquet") and isinstance(finding["row"], int))
    return out


@SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes_never_raise(tmp_path, data):
    check(tmp_path, data, "sft")
    check(tmp_path, data, "dpo", tokenizer=None)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=300), st.lists(json_values, max_size=4).map(lambda r: json.dumps(r).encode()),
                      st.text(max_size=200).map(lambda t: ("a,b\n" + t).encode("utf-8", "surrogatepass"))),
       name=st.sampled_from(["fuzz.json", "fuzz.csv", "fuzz.tsv", "fuzz.parquet", "fuzz"]))
def test_any_bytes_under_any_container_name_never_raise(tmp_path, data, name):
    check(tmp_path, data, "sft", tokenizer=None, name=name)


@SETTINGS
@given(rows=st.lists(json_values, max_size=6), method=st.sampled_from(["sft", "dpo"]))
def test_random_json_never_raises(tmp_path, rows, method):
    check(tmp_path, "\n".join(json.dumps(r) for r in rows).encode(), method)


@SETTINGS
@given(rows=st.lists(st.one_of(chat_rows, dpo_rows, pair_rows), min_size=1, max_size=6), method=st.sampled_from(["sft", "dpo"]))
def test_almost_valid_rows_never_raise(tmp_path, rows, method):
    out = check(tmp_path, "\n".join(json.dumps(r) for r in rows).encode(), method)
    assert out["n_examples"] == len(rows)
