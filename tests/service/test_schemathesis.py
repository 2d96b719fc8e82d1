"""schemathesis against the service's own /openapi.json: no 5xx and no answer outside its documented schema.

Checks: schemathesis' defaults (not_a_server_error, status_code_conformance, content_type_conformance,
response_schema_conformance, ...). An operation that documents a 503 (readiness, "not ready", "overloaded")
is checked with status_code_conformance instead of not_a_server_error: its 503 is an answer on purpose, and
any undocumented status there (a 500) still fails. Left out: positive_data_acceptance, because schema-valid random bytes
are not images, so a 400 `not_an_image` to generated "valid" data is correct; real images are fuzzed in
tests/service/test_fuzz.py instead.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import load_all_checks, not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.service.test_hardening import bundle_dir


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory):
    from service.app import create_app
    from service.config import Settings
    from tests.conftest import wait_until_loaded

    app = create_app(Settings(models_dir=bundle_dir(tmp_path_factory.mktemp("bundle")),
                              providers=["CPUExecutionProvider"], access_log=False, workers=1,
                              collections_dir=tmp_path_factory.mktemp("collections")))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_until_loaded(client)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


load_all_checks()


def test_an_empty_multipart_is_described_as_invalid(api_schema) -> None:
    document = api_schema.raw_schema
    for path in ("/v1/classify", "/v1/detect", "/v1/segment", "/v1/keypoints"):
        multipart = document["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert multipart["properties"]["file"].get("minItems") == 1, path


def test_the_api_keeps_its_openapi_contract(api_schema) -> None:
    # Driven by hypothesis directly, one operation after another (schemathesis' pytest plugin does not
    # support this pytest), so a failure names the operation and the case.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert operations

    for operation in operations:
        check_conformance(operation)


def check_conformance(operation) -> None:  # type: ignore[no-untyped-def]
    excluded = [positive_data_acceptance]
    if "503" in operation.definition.raw.get("responses", {}):
        excluded.append(not_a_server_error)

    @given(case=operation.as_strategy())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def conforms(case) -> None:  # type: ignore[no-untyped-def]
        case.call_and_validate(excluded_checks=excluded)

    conforms()
