"""What a client's strings may hold before they reach the database or a file's metadata.

PostgreSQL refuses a NUL byte in any text value (psycopg raises DataError: a 500 and a dropped connection),
SQLite stores it: so the same identifier must be refused on both, before the query. Identifiers (ids, model
names, cursors) hold no control characters at all; free text (metadata values) may hold newlines and tabs but
never NUL. Filenames lose control characters and the bidirectional overrides that make `exe.lmnoj` read as
`jsonl.exe`. Framework-free: the worker and the store may use it too.
"""

from __future__ import annotations

import unicodedata

from tuneforge.service.api_error import APIError

# Explicit bidirectional formatting characters (Unicode's "Bidi_Control") plus the zero-width ones that hide
# text: they change how a name is displayed without being visible themselves.
BIDI_AND_INVISIBLE = frozenset(
    "\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
)
MAX_FILENAME = 255


def has_control(text: str, *, allow_whitespace: bool = False) -> bool:
    """True when `text` holds a C0/C1 control character (NUL included); tab, newline and carriage return
    pass when `allow_whitespace`."""
    for char in text:
        if unicodedata.category(char) == "Cc" and not (allow_whitespace and char in "\t\n\r"):
            return True
    return False


def is_identifier(text: object, max_length: int = 512) -> bool:
    """Something that may be looked up in the database as an id or a name."""
    return isinstance(text, str) and 0 < len(text) <= max_length and not has_control(text)


def check_identifier(value: str, param: str, max_length: int = 256) -> str:
    """`value` unchanged, or a 400 naming `param` (what is wrong and the limit)."""
    if len(value) > max_length:
        raise APIError(
            400, f"Invalid '{param}': at most {max_length} characters (got {len(value)}).", code="invalid_request",
            param=param,
        )
    if has_control(value):
        raise APIError(
            400, f"Invalid '{param}': control characters (such as NUL) are not allowed.", code="invalid_request",
            param=param,
        )
    return value


def clean_filename(name: str) -> str:
    """An uploaded file's name as shown back: no folders, no control, bidi or zero-width characters, at most
    255 characters (the extension kept)."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(
        char for char in unicodedata.normalize("NFC", name)
        if char not in BIDI_AND_INVISIBLE and unicodedata.category(char) not in ("Cc", "Cs")
    ).strip()
    if len(name) > MAX_FILENAME:
        stem, dot, extension = name.rpartition(".")
        name = stem[: MAX_FILENAME - len(extension) - 1] + dot + extension if dot and len(extension) < 16 else name[
            :MAX_FILENAME]
    return name
