"""Nobody in: no pickle is ever loaded, remote code never runs, chat templates stay in Jinja's sandbox and
cannot blow a row up, and the service builds paths only from ids it generated."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import make_tokenizer
from tuneforge.data.tokenize import MAX_RENDERED_CHARS, render, tokenize_conversation
from tuneforge.errors import UserError
from tuneforge.models import load_adapter

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "tuneforge").rglob("*.py"))


def source_lines(pattern: str) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in SOURCES
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(pattern, line) and not line.lstrip().startswith("#")
    ]


def test_nothing_is_unpickled():
    assert source_lines(r"torch\.load\(|import pickle|pickle\.load|import dill|joblib\.load") == []


def test_remote_code_never_runs():
    assert source_lines(r"trust_remote_code\s*=\s*True") == []
    # Every explicit mention pins it off.
    assert all("trust_remote_code=False" in line for line in source_lines(r"trust_remote_code"))


def test_every_peft_adapter_load_goes_through_the_safetensors_check():
    loads = source_lines(r"PeftModel\.from_pretrained\(")
    assert len(loads) == 1 and loads[0].startswith("tuneforge/models.py"), loads


def test_an_adapter_with_only_a_bin_file_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(UserError) as caught:
        load_adapter(None, tmp_path)
    assert caught.value.code == "unsafe_adapter_format" and "adapter_model.bin" in str(caught.value)


MESSAGES = [{"role": "user", "content": "hello " * 10}, {"role": "assistant", "content": "hi"}]


def tokenizer_with(template: str):
    tokenizer = make_tokenizer()  # a fresh one: the session fixture must not change
    tokenizer.chat_template = template
    return tokenizer


def test_chat_templates_render_in_the_immutable_sandbox():
    from transformers.utils import chat_template_utils

    assert "ImmutableSandboxedEnvironment" in Path(chat_template_utils.__file__).read_text()
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    mutate = "{% set x = [] %}{{ x.append(1) }}{{ messages[0]['content'] }}"
    for template in (escape, mutate):
        with pytest.raises(UserError) as caught:
            render(tokenizer_with(template), MESSAGES)
        assert caught.value.code == "template_unsafe"


def test_a_template_that_explodes_is_refused():
    # 100,000 copies (Jinja's sandbox caps range() there) of a 60-character message: 6 MB.
    bomb = "{% for i in range(100000) %}{{ messages[0]['content'] }}{% endfor %}"
    with pytest.raises(UserError) as caught:
        tokenize_conversation(tokenizer_with(bomb), MESSAGES)
    assert caught.value.code == "template_output_too_large"
    assert f"{MAX_RENDERED_CHARS:,}" in str(caught.value)


def test_service_paths_come_from_generated_ids():
    """Stored files and run folders are named by ids the service made (new_id), never by user strings."""
    service = ROOT / "tuneforge" / "service"
    joins = source_lines(r"(files_dir|runs_dir)\s*\)?\s*/")
    assert joins, "expected path joins under files_dir/runs_dir"
    for line in joins:
        assert re.search(r"/ (file_id|job\.id)\b", line), line
    assert 'file_id = new_id("file")' in (service / "file_storage.py").read_text()  # where uploads are stored
