"""Property-based fuzzing of the real `tuneforge serve` through its own OpenAPI schema (schemathesis):
every operation, generated valid and invalid inputs, with a valid API key; no request may answer 5xx, on
SQLite and on PostgreSQL (which refuses NUL in text where SQLite stores it, and checks varchar lengths).

Examples per operation: TUNEFORGE_API_FUZZ_EXAMPLES (default 100; see docs/reliability.md for the counts a
full run reaches). No workers run, so created jobs stay queued and the fuzz measures only the API.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from conftest import Server, fake_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

pytestmark = pytest.mark.service
EXAMPLES = int(os.environ.get("TUNEFORGE_API_FUZZ_EXAMPLES", "100"))
SEEN = {"requests": 0}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fuzz_server(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    database_url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    # Rate limits off: a 429 is not a 5xx, but it would stop the fuzz from reaching the routes.
    env = fake_env(TUNEFORGE_MAX_UPLOAD_BYTES="20000", TUNEFORGE_REQUESTS_PER_MINUTE="0",
                   TUNEFORGE_CHAT_TOKENS_PER_MINUTE="0")
    server = Server(root / "data", workers=0, database_url=database_url, env=env).start()
    server.key = server.create_key(f"fuzz{request.param}")
    yield server
    server.stop()
    print(f"\nAPI fuzz ({request.param}): {SEEN['requests']} requests, none answered 5xx")


def fuzz_operation(operation, server, counts: dict) -> None:
    """Hypothesis over one operation: schema-valid inputs and schema-violating ones."""
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    headers = {"Authorization": f"Bearer {server.key}"}

    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
    )
    @given(case=strategy)
    def run(case):
        response = case.call(base_url=server.url, headers=headers, timeout=30)
        counts[operation.label] = counts.get(operation.label, 0) + 1
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}\n"
            f"{case.as_curl_command(headers=headers)}"
        )

    run()


def test_no_request_answers_5xx(fuzz_server):
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    counts: dict[str, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        fuzz_operation(operation, fuzz_server, counts)
    SEEN["requests"] = sum(counts.values())
    print("\n" + "\n".join(f"{n:6d}  {label}" for label, n in sorted(counts.items())))
    assert SEEN["requests"] >= EXAMPLES * len(operations) // 2
