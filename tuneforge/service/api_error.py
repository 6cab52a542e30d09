"""The service's error for a request it refuses, free of any web framework: the worker imports the modules
that raise it (job options, integrations), and the worker never imports fastapi (tests/service/test_no_torch.py).
errors.py turns it into OpenAI's envelope."""

from __future__ import annotations


class APIError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


def not_found(kind: str, object_id: str, param: str | None = None) -> APIError:
    # The code is an identifier: "fine-tuning job" -> fine_tuning_job_not_found.
    code = kind.replace(" ", "_").replace("-", "_") + "_not_found"
    return APIError(404, f"No such {kind}: {object_id}", code=code, param=param)
