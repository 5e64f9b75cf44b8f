"""Property-based fuzz of the whole API from its own OpenAPI (schemathesis), as admin against the real
servers: no answer is a 5xx and every documented answer matches its schema."""

from __future__ import annotations

import pytest
import schemathesis
from api_helpers import RunningApi
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance


@pytest.fixture(scope="session")
def api_schema(api: RunningApi) -> schemathesis.BaseSchema:
    # Valid and invalid inputs both: bad input must get a 4xx, never a 500.
    config = schemathesis.Config.from_dict({"generation": {"mode": "all", "max-examples": 40}})
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_schema_conformance(case: schemathesis.Case, api: RunningApi) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {api.admin_token}"},
                           checks=[not_a_server_error, response_schema_conformance], timeout=60)
