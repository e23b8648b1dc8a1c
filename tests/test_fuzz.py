"""The whole API fuzzed from its OpenAPI schema (schemathesis): no 5xx, no answer off its schema.

The service runs on the hand-made run of ``test_service`` (in process, through ASGI); for every
operation, Hypothesis generates cases from the declared parameters and bodies, valid and not.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency (make setup)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from test_service import TOKEN, make_app, write_run  # noqa: E402

EXAMPLES = 60  # per operation: some 700 requests in all, a few seconds


def test_no_5xx_and_every_answer_keeps_its_schema(tmp_path):
    root = write_run(tmp_path)
    app = make_app(root, root / "fuzz.sqlite")
    with TestClient(app):  # the lifespan: artefacts loaded, store open
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 10
        for operation in operations:

            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def fuzz(case):
                case.call_and_validate(
                    checks=[not_a_server_error, response_schema_conformance], headers={"X-Admin-Token": TOKEN}
                )

            fuzz()
