"""Files -> rows, whatever holds them (the step before formats.py):  tuneforge validate data.parquet

    jsonl        one JSON value per line (.jsonl, .ndjson, or any other name)   positions: line numbers, from 1
    json         a JSON array (.json), or pretty-printed objects one after another
    csv, tsv     a header row of field names, then one example per row (.csv, .tsv)
    parquet      a Parquet file (.parquet), read in batches
    datasets     a Hugging Face `datasets` folder written by save_to_disk, read offline (`datasets.load_from_disk`)
    hub_cache    a hub id (`tatsu-lab/alpaca`, `owner/name:split`) already in the local datasets cache, read
                 offline as `load_dataset` reads it with HF_DATASETS_OFFLINE=1; never downloaded

In every container but JSONL a position is a `Row`: the 0-based index (as dataset[i], df.iloc[i] or
array[i]) and, in a text file, the line the row starts on. The container is sniffed from the content
as well as the name, so a CSV or a pretty-printed JSON array saved as .jsonl gets one file-level note
(`container_mismatch`) and is read as what it is, not one decoder error per line. Everything that reads
training data goes through `open_rows` (validate, which collects every problem) or `read_rows` (the
loaders in formats.py and preference.py, convert, preview: they stop at the first problem).

A file whose fields have other names (`question`/`answer`) is read through a column mapping (`--columns
prompt:question,completion:answer`, train's `columns=`): `with_columns(path, mapping)` is the path with the
mapping attached, and every row's fields are renamed before anything looks at its layout.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError

CONTAINERS = {
    "jsonl": "JSONL",
    "json": "a JSON array",
    "json_stream": "pretty-printed JSON objects one after another",
    "csv": "CSV",
    "tsv": "TSV",
    "parquet": "Parquet",
    "datasets": "a datasets folder (save_to_disk)",
    "hub_cache": "a dataset in the local Hugging Face datasets cache",
}
JSONL_SUFFIXES = (".jsonl", ".ndjson")
SUFFIXES = {".json": "json", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
SNIFF_BYTES = 1 << 22  # enough for the first pretty-printed example of any sane file
_FIELD_NAME = re.compile(r"[A-Za-z_][\w .-]{0,63}")
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?::(?P<split>[\w.-]+))?")
# CSV cells of these columns hold JSON (a message list, tools, an OpenAI DPO answer).
_JSON_COLUMNS = {"messages", "conversations", "tools", "history", "preferred_output", "non_preferred_output"}
# Text columns whose cell may instead hold messages: decoded only when the JSON is message-shaped.
_MAYBE_MESSAGES = {"prompt", "completion", "chosen", "rejected", "input"}
# Every field a format reads (formats.py, layouts.py): what a column mapping may map a file's own field onto.
KNOWN_FIELDS = ("messages", "tools", "prompt", "completion", "conversations", "system", "instruction", "input",
                "output", "history", "chosen", "rejected", "preferred_output", "non_preferred_output")


@dataclass(frozen=True, order=True)
class Row:
    """Where an example sits in a container other than JSONL (in JSONL a position is the line number)."""

    index: int  # 0-based, as dataset[i]
    line: int | None = None  # the line it starts on, in a text file (CSV, JSON)

    def __str__(self) -> str:
        return f"row {self.index}" + (f" (line {self.line})" if self.line is not None else "")


def describe(place: int | Row) -> str:
    """'line 7', 'row 3 (line 5)', 'row 3', or 'the file' for position 0."""
    if isinstance(place, Row):
        return str(place)
    return f"line {place}" if place else "the file"


@dataclass
class Source:
    """An opened training file: its container, its rows (lazily) and file-level notes (said once).

    `rows` yields (position, parsed row or None, (code, message) or None, bytes read so far); a problem
    at position 0 is about the whole file."""

    path: Path
    container: str
    rows: Iterator
    notes: list[tuple[str, str]] = field(default_factory=list)
    size: int = 0  # bytes, for progress; 0 when unknown


@dataclass
class MappedFile(os.PathLike):
    """A training file read with a column mapping (known field -> the file's field): `with_columns` makes one.

    It stands wherever a path does (validate_file, convert_file, the loaders; `str()` is the path), so the
    mapping reaches `open_rows` without every verb in between passing it on."""

    path: Path
    columns: dict[str, str]

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


def with_columns(path: str | Path, columns: dict[str, str] | None) -> str | Path | MappedFile:
    """`path`, read with `columns` (from `parse_columns`) when there are any; as it is otherwise."""
    return MappedFile(Path(path), dict(columns)) if columns else path


def parse_columns(value: Any) -> dict[str, str]:
    """{known field: the file's field} from "prompt:question,completion:answer" or a mapping (YAML).

    ValueError says what is wrong: a target that no format reads, a field mapped twice, an empty name."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return {}
    if isinstance(value, str):
        pairs = []
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            if ":" not in item:
                raise ValueError(f"{item!r}: expected known_field:file_field, e.g. prompt:question")
            pairs.append(tuple(side.strip() for side in item.split(":", 1)))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise ValueError(f"expected known_field:file_field,... or a mapping, got {value!r}")
    columns: dict[str, str] = {}
    for target, source in pairs:
        if not isinstance(target, str) or not isinstance(source, str) or not target or not source:
            raise ValueError(f"{target!r}: {source!r}: both names must be non-empty text")
        if target not in KNOWN_FIELDS:
            raise ValueError(f"{target!r} is no field a format reads; map onto one of {', '.join(KNOWN_FIELDS)}")
        if target in columns:
            raise ValueError(f"{target!r} is mapped twice ({columns[target]!r} and {source!r}); keep one")
        columns[target] = source
    return columns


def open_rows(path: str | Path | MappedFile) -> Source:
    """Sniff the container and return its rows unread; UserError only for what no report can describe."""
    columns = path.columns if isinstance(path, MappedFile) else {}
    path = Path(path)
    if not path.exists():
        builder, split = hub_cache_builder(str(path))  # "file not found" unless it is a cached hub id
        return Source(path, "hub_cache", _renamed(_hub_cache_rows(builder, split), columns))
    if path.is_dir():
        return Source(path, "datasets", _renamed(_dataset_rows(_dataset_folder(path)), columns))
    container, note = detect_container(path)
    if container in ("csv", "tsv"):  # a mapped column's cells are decoded as its target's
        rows = _csv_rows(path, container, columns)
    else:
        rows = {"jsonl": _jsonl_rows, "json": _json_rows, "json_stream": _json_rows, "parquet": _parquet_rows}[
            container](path, container)
    return Source(path, container, _renamed(rows, columns), [note] if note else [], path.stat().st_size)


def _renamed(rows: Iterator, columns: dict[str, str]) -> Iterator:
    """The rows with the file's fields renamed to the known ones; a row without a mapped field is a problem."""
    if not columns:
        yield from rows
        return
    for place, row, problem, done in rows:
        if problem is None and isinstance(row, dict):  # not an object: reported as such by the checks
            row, problem = rename_fields(row, columns)
        yield place, row, problem, done


def rename_fields(row: dict, columns: dict[str, str]) -> tuple[dict | None, tuple[str, str] | None]:
    """(the row with each mapped field under its known name, None), or (None, a `missing_field` problem).

    A field of the row already named like a target is replaced by the mapped one; other fields stay."""
    for target, source in columns.items():
        if source not in row:
            fields = ", ".join(map(repr, row)) or "none"
            return None, ("missing_field", f"no field {source!r} (the column mapping reads {target} from it); "
                          f"the row's fields: {fields}"[:300])
    sources = set(columns.values())
    renamed = {key: value for key, value in row.items() if key not in sources and key not in columns}
    renamed.update({target: row[source] for target, source in columns.items()})
    return renamed, None


def read_rows(path: str | Path) -> Iterator[tuple[int | Row, Any]]:
    """(position, row) for every row; the first problem is a UserError naming the file and the position."""
    for place, row, problem, _done in open_rows(path).rows:
        if problem:
            raise place_error(problem[1], path, place, problem[0])
        yield place, row


def place_error(message: str, path, place: int | Row, code: str | None = None) -> UserError:
    """`path:7: message` for a JSONL line, `path:row 3 (line 5): message` otherwise, `path: message` for the file."""
    return UserError(message, path=str(path), line=place or None, code=code)


# ---- which container ---------------------------------------------------------------------------------


def detect_container(path: Path) -> tuple[str, tuple[str, str] | None]:
    """(container, a `container_mismatch` note or None): the content wins where it is unmistakable."""
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    sniffed, sure = _sniff(head, whole=len(head) < SNIFF_BYTES)
    suffix = path.suffix.lower()
    named = "jsonl" if suffix in JSONL_SUFFIXES else SUFFIXES.get(suffix)
    if named is None:  # no telling name (the service stores uploads without one): the content decides
        return sniffed, None
    json_family, tables = ("jsonl", "json", "json_stream"), ("csv", "tsv")
    if sniffed == named or (named == "json" and sniffed in json_family) or (named in tables and sniffed in tables):
        return sniffed, None  # the same family: a .json of JSONL lines, a .csv whose header has tabs
    if not sure:
        return named, None
    said = "JSONL" if named == "jsonl" else CONTAINERS[named]
    numbered = "lines numbered from 1" if sniffed == "jsonl" else "rows numbered from 0"
    return sniffed, ("container_mismatch", f"this is {CONTAINERS[sniffed]}, not {said} as its name says: "
                     f"read as {CONTAINERS[sniffed]}, {numbered}")


def _sniff(head: bytes, whole: bool) -> tuple[str, bool]:
    """(container, sure) from the first bytes; not sure means "JSONL, by default"."""
    if head.startswith(b"PAR1"):
        return "parquet", True
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
    body = text.lstrip()
    if not body:
        return "jsonl", False
    lines = [line for line in body.splitlines() if line.strip()]
    first = lines[0]
    if body[0] in "[{":
        try:
            json.loads(first)
        except (json.JSONDecodeError, RecursionError):
            pass
        else:  # the first line is a whole JSON value: JSONL, unless it is an array and all there is
            one_array = body[0] == "[" and len(lines) == 1 and whole
            return ("json" if one_array else "jsonl"), True
        if body[0] == "[" and first.strip() == "[":
            return "json", True
        try:
            _value, end = json.JSONDecoder().raw_decode(body)
        except (json.JSONDecodeError, RecursionError):
            return "jsonl", False  # a broken first line; the other lines are judged one by one
        if "\n" in body[:end]:
            return ("json" if body[0] == "[" else "json_stream"), True
        return "jsonl", False
    delimiter = "\t" if "\t" in first else ","
    header = next(csv.reader([first], delimiter=delimiter))
    if len(header) >= 2 and all(_FIELD_NAME.fullmatch(name.strip()) for name in header):
        return ("tsv" if delimiter == "\t" else "csv"), True
    return "jsonl", False


# ---- the containers ------------------------------------------------------------------------------------


def _jsonl_rows(path: Path, _container: str):
    done = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            done += len(raw)
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors)
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw), None, done
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield number, None, ("invalid_json", f"not valid JSON ({exc})"[:300]), done
            except RecursionError:
                yield number, None, ("invalid_json", "not usable JSON (nested too deeply)"), done


def _json_rows(path: Path, container: str):
    """The elements of one JSON array (or a run of JSON values), each with the line it starts on."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield 0, None, ("invalid_json", f"not UTF-8 ({exc})"[:300]), 0
        return
    decoder, index, line, counted = json.JSONDecoder(), 0, 1, 0
    position = _skip_space(text, 0)
    array = container == "json"
    if array:
        position = _skip_space(text, position + 1)  # past '['
    while position < len(text) and not (array and text[position] == "]"):
        line += text.count("\n", counted, position)
        counted = position
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            yield (Row(index, exc.lineno), None, ("invalid_json", f"not valid JSON at line {exc.lineno} column "
                   f"{exc.colno} ({exc.msg}); the rest of the file cannot be read"), position)
            return
        except RecursionError:
            yield Row(index, line), None, ("invalid_json", "not usable JSON (nested too deeply)"), position
            return
        yield Row(index, line), value, None, end
        index += 1
        position = _skip_space(text, end)
        if array and position < len(text) and text[position] == ",":
            position = _skip_space(text, position + 1)
        elif array and (position >= len(text) or text[position] != "]"):
            where = text.count("\n", 0, position) + 1
            yield (Row(index, where), None, ("invalid_json", f"expected ',' or ']' at line {where} after row "
                   f"{index - 1}; the rest of the file cannot be read"), position)
            return


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _csv_rows(path: Path, container: str, columns: dict[str, str] | None = None):
    """Rows under a header; an empty line is skipped (as pandas does), a row's line is where it starts.

    With a column mapping a mapped column's cells are decoded as its target's are (JSON in `messages`)."""
    done = 0
    decode_as = {source: target for target, source in (columns or {}).items()}

    def lines(handle):
        nonlocal done
        for number, raw in enumerate(handle):
            done += len(raw)
            text = raw.decode("utf-8", errors="surrogateescape")  # bad bytes reach the checks as bad_content
            yield text.removeprefix("\ufeff") if number == 0 else text

    with path.open("rb") as handle:
        reader = csv.reader(lines(handle), delimiter="\t" if container == "tsv" else ",")
        try:
            header = [name.strip() for name in next(reader, [])]
        except csv.Error as exc:
            yield 0, None, ("bad_cells", f"the header row is not readable ({exc})"), done
            return
        absent = [(target, source) for target, source in (columns or {}).items() if source not in header]
        if absent:  # one problem for the file, not one per row
            target, source = absent[0]
            yield 0, None, ("missing_field", f"no column {source!r} (the column mapping reads {target} from it); "
                            f"the header's columns: {', '.join(header)}"[:300]), done
            return
        index, previous = 0, reader.line_num
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Row(index, previous + 1), None, ("bad_cells", f"not readable ({exc}); the rest of the file "
                                                        "cannot be read"), done
                return
            start, previous = previous + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                yield (Row(index, start), None, ("bad_cells", f"{len(cells)} cells, but the header has "
                       f"{len(header)} columns ({', '.join(header)})"), done)
            else:
                row = {name: _cell(decode_as.get(name, name), cell) for name, cell in zip(header, cells, strict=True)}
                yield Row(index, start), row, None, done
            index += 1


def _cell(column: str, text: str) -> Any:
    """A CSV cell as its value: JSON in the structured columns, text elsewhere (unless it holds messages)."""
    if (column not in _JSON_COLUMNS and column not in _MAYBE_MESSAGES) or not text.lstrip().startswith(("[", "{")):
        return text
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text
    if column in _JSON_COLUMNS:
        return value
    message = ("role" in value or "from" in value or "messages" in value) if isinstance(value, dict) else False
    messages = isinstance(value, list) and bool(value) and all(isinstance(m, dict) and ("role" in m or "from" in m)
                                                               for m in value)
    return value if message or messages else text


def _parquet_rows(path: Path, _container: str):
    import pyarrow
    import pyarrow.parquet

    index = 0
    try:
        for batch in pyarrow.parquet.ParquetFile(path).iter_batches(batch_size=512):
            for row in batch.to_pylist():
                yield Row(index), without_nulls(row), None, 0
                index += 1
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        yield (Row(index) if index else 0), None, ("unreadable_file", f"not readable as Parquet ({exc})"[:300]), 0


def _dataset_folder(path: Path) -> Path:
    """A folder from save_to_disk; a DatasetDict (one folder per split) or another folder is a usage error."""
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "dataset_info.json").is_file())
        raise UserError(f"a DatasetDict folder (splits: {', '.join(splits) or 'none'}): pass one split, e.g. "
                        f"{path / (splits[0] if splits else 'train')}", path=str(path))
    if not (path / "dataset_info.json").is_file() and not (path / "state.json").is_file():
        raise UserError("a folder, but not a datasets folder written by save_to_disk (no dataset_info.json or "
                        "state.json); give a file, or the folder save_to_disk wrote", path=str(path))
    return path


def _dataset_rows(path: Path):
    import datasets

    datasets.disable_progress_bars()
    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        yield 0, None, ("unreadable_file", f"not readable with datasets.load_from_disk ({exc})"[:300]), 0
        return
    for index, row in enumerate(dataset):
        yield Row(index), without_nulls(row), None, 0


def hub_cache_builder(spec: str):
    """(a datasets builder over the cached dataset, its split) of a hub id in the local datasets cache.

    The folder `load_dataset(repo)` wrote, found as it finds it with HF_DATASETS_OFFLINE=1 (the newest cached
    version); a spec that is no hub id is "file not found", one not in the cache says where it looked."""
    match = _HUB_ID.fullmatch(spec)
    if match is None or Path(match["repo"]).suffix.lower() in (*JSONL_SUFFIXES, *SUFFIXES):
        raise UserError("file not found", path=spec)
    import datasets.config
    from datasets.packaged_modules.cache.cache import Cache

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()  # not its "Found the latest cached dataset configuration" line
    repo, cache = match["repo"], datasets.config.HF_DATASETS_CACHE
    try:  # hash and version "auto": the builder only looks in the cache folder, it never downloads
        builder = Cache(cache_dir=str(cache), dataset_name=repo.split("/")[1], repo_id=repo, hash="auto",
                        version="auto")
    except ValueError as exc:
        if str(exc).startswith("There are multiple"):
            raise UserError(f"{str(exc).splitlines()[0]} ({cache}): tuneforge reads a dataset cached with one "
                            "configuration; save the one you mean with save_to_disk and pass its folder",
                            path=spec) from None
        raise UserError(f"no such file, and not in the local datasets cache ({cache}); tuneforge never downloads: "
                        f"fetch it once with datasets.load_dataset({repo!r}), or give a file", path=spec) from None
    splits = list(builder.info.splits or {})
    split = match["split"] or ("train" if "train" in splits or not splits else splits[0] if len(splits) == 1 else "")
    if split not in splits:
        choices = ", ".join(f"{repo}:{name}" for name in splits) or "none"
        raise UserError(f"the cached dataset has no split {split or 'train'!r}: name one ({choices})", path=spec)
    return builder, split


def _hub_cache_rows(builder, split: str):
    try:
        dataset = builder.as_dataset(split=split)
    except (OSError, ValueError) as exc:
        yield 0, None, ("unreadable_file", f"not readable from the datasets cache ({exc})"[:300]), 0
        return
    for index, row in enumerate(dataset):
        yield Row(index), without_nulls(row), None, 0


def without_nulls(value: Any) -> Any:
    """Columnar files give every row every column, absent ones as null: drop them, so absent stays absent."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value
