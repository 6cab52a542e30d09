"""What `tuneforge serve` changes in uvicorn: requests it cannot parse (a 100 KB header, a malformed request
line) answer 400 in OpenAI's envelope instead of plain text, and its logs never hold an API key (a key put in
a URL, `?key=tf-...`, is written as `tf-REDACTED`).
"""

from __future__ import annotations

import json
import logging
import re

from uvicorn.protocols.http.auto import AutoHTTPProtocol

KEY_IN_TEXT = re.compile(r"tf-[A-Za-z0-9_\-]{8,}")
KEY_PARAMETER = re.compile(r"(?i)([?&#;](?:key|api_key|api-key|apikey|token|access_token)=)[^&\s\"]*")


def redact(text: str) -> str:
    return KEY_PARAMETER.sub(r"\1REDACTED", KEY_IN_TEXT.sub("tf-REDACTED", text))


class RedactKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def install_log_redaction() -> None:
    """After uvicorn configured its loggers (uvicorn.Config does), so its dictConfig does not drop the filter."""
    for name in ("uvicorn.access", "uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactKeys) for existing in logger.filters):
            logger.addFilter(RedactKeys())


def _bad_request_bytes(message: str) -> bytes:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_http_request"}}
    ).encode()
    head = (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nx-should-retry: false\r\n"
        b"x-content-type-options: nosniff\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
    )
    return head + body


class EnvelopeHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's own protocol (httptools or h11), with its parse-error answer in the envelope."""

    def send_400_response(self, msg: str) -> None:
        message = (
            "The request could not be parsed as HTTP/1.1 (malformed, or headers over the server's limit). "
            f"{msg}"
        )
        self.transport.write(_bad_request_bytes(message))
        self.transport.close()
