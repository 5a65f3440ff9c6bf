"""GET /openapi.json (a valid OpenAPI 3.1 document of every route and function) and the /docs page."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pydantic
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import OpenAPIV31SpecValidator

import api
from api.openapi import openapi_path
from api.schedule import read_at
from runner.authoring.registry import Registry, make_spec
from runner.errors import MalformedRequest
from runner.services.backends import Backends
from runner.services.idempotency import check_key
from runner.services.job_views import JobView

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


class Point(pydantic.BaseModel):
    x: float
    y: float


class Shape(pydantic.BaseModel):
    """A polygon."""

    points: list[Point]
    label: str = ""


class Other(pydantic.BaseModel):
    # Same name as Shape's nested model, different schema: must not overwrite it.
    class Point(pydantic.BaseModel):
        lat: float

    where: Point


def area(shape: Shape) -> dict:
    """The area of a polygon."""
    return {}


def locate(spec: Other) -> dict:
    """Somewhere else."""
    return {}


@pytest.fixture
def nested_registry() -> Registry:
    registry = Registry.discover("functions")
    registry.add(make_spec(area, queue="default", timeout=5, retries=1, backoff=[2], name=None))
    registry.add(make_spec(locate, queue="default", timeout=5, retries=0, backoff=None, name=None))
    return registry


@pytest.fixture
def nested_app(backends: Backends, nested_registry: Registry) -> Flask:
    return api.create_app({"RUNNER_SETTINGS": backends.settings, "RUNNER_BACKENDS": backends,
                           "RUNNER_REGISTRY": nested_registry, "TESTING": True})


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    return body


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def resolve(document: dict[str, Any], reference: str) -> Any:
    node: Any = document
    for part in reference.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(document).validate()


def test_schemathesis_loads_every_operation(document: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(document)
    loaded = {f"{result.ok().method.upper()} {result.ok().path}" for result in schema.get_all_operations()}
    assert "POST /functions/simple_calculation/invocations" in loaded
    assert "GET /jobs/{job_id}/events" in loaded


def test_every_route_of_the_app_is_documented(app: Flask, document: dict[str, Any]) -> None:
    for rule in app.url_map.iter_rules():
        # Only the HTML of the docs page and the dashboard (and static files) are not part of the JSON API.
        if rule.endpoint == "static" or rule.rule.startswith(("/docs", "/dashboard")):
            assert rule.endpoint.startswith(("static", "docs.", "rq_dashboard.")), rule
            continue
        path, _ = openapi_path(rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            operation = document["paths"][path][method.lower()]
            assert operation["responses"], (method, path)
            assert "default" in operation["responses"]
    for path in ("/functions", "/functions/{name}", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events",
                 "/jobs/{job_id}/artifacts/{name}", "/uploads", "/uploads/{upload_id}", "/healthz", "/readyz",
                 "/workers", "/queues", "/queues/failed/requeue", "/openapi.json"):
        assert path in document["paths"], path
    assert not any(path.startswith(("/docs", "/dashboard")) for path in document["paths"])


def test_every_reference_resolves_and_no_local_defs_are_left(nested_app: Flask) -> None:
    document = nested_app.test_client().get("/openapi.json").get_json()
    references = [value for key, value in walk(document) if key == "$ref"]
    assert references
    for reference in references:
        assert reference.startswith("#/components/schemas/"), reference
        assert isinstance(resolve(document, reference), dict), reference
    assert not [key for key, _ in walk(document) if key == "$defs"]


def test_each_function_has_its_own_invocation_path_with_its_input_schema(
    document: dict[str, Any], registry: Registry
) -> None:
    for spec in registry:
        operation = document["paths"][f"/functions/{spec.name}/invocations"]["post"]
        body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert resolve(document, body_schema["$ref"]) == spec.input_schema()  # no $defs: identical
        assert set(operation["responses"]) >= {"200", "202", "400", "404", "409", "413", "415", "422", "429", "503"}
        assert operation["responses"]["202"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/JobView"
        }
        assert operation["responses"]["422"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
        assert spec.queue in operation["description"]
    calculation = document["paths"]["/functions/simple_calculation/invocations"]["post"]
    assert calculation["requestBody"]["required"] is True
    assert calculation["operationId"] == "invoke_simple_calculation"


def test_nested_models_move_to_components_without_clobbering_each_other(nested_app: Flask) -> None:
    document = nested_app.test_client().get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    area_body = document["paths"]["/functions/area/invocations"]["post"]["requestBody"]["content"]
    shape = resolve(document, area_body["application/json"]["schema"]["$ref"])
    point = resolve(document, shape["properties"]["points"]["items"]["$ref"])
    assert set(point["properties"]) == {"x", "y"}
    locate_body = document["paths"]["/functions/locate/invocations"]["post"]["requestBody"]["content"]
    other = resolve(document, locate_body["application/json"]["schema"]["$ref"])
    other_point = resolve(document, other["properties"]["where"]["$ref"])
    assert set(other_point["properties"]) == {"lat"}
    assert other["properties"]["where"]["$ref"] != shape["properties"]["points"]["items"]["$ref"]
    assert "Shape" in schemas and "Other" in schemas
    # The whole document is still valid with the moved definitions.
    OpenAPIV31SpecValidator(document).validate()


def test_components_hold_the_shared_shapes(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert {"JobView", "Error", "Function", "FunctionList", "JobList", "Upload", "WorkerList", "QueueList",
            "RequeueFilter", "RequeueOutcome"} <= set(schemas)
    assert set(schemas["Error"]["required"]) == {"error", "message", "details"}
    assert "finished" in schemas["JobView"]["properties"]["status"]["enum"]
    bearer = document["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearerAuth": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []


def parameters_by_name(operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {parameter["name"]: parameter for parameter in operation.get("parameters", [])}


def invocation_operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The generic `/functions/{name}/invocations` operation and every function's own."""
    return [operations["post"] for path, operations in document["paths"].items()
            if path.startswith("/functions/") and path.endswith("/invocations")]


def test_every_invocation_documents_its_query_and_header_parameters(
    document: dict[str, Any], backends: Backends, registry: Registry
) -> None:
    operations = invocation_operations(document)
    assert len(operations) == len(registry) + 1
    for operation in operations:
        parameters = parameters_by_name(operation)
        query = {name for name, parameter in parameters.items() if parameter["in"] == "query"}
        headers = {name for name, parameter in parameters.items() if parameter["in"] == "header"}
        assert (query, headers) == ({"wait", "delay", "at", "after", "expires"}, {"Idempotency-Key", "X-Callback-Url"})
        assert not any(parameter["required"] for parameter in parameters.values() if parameter["in"] != "path")
        assert parameters["wait"]["schema"] == {"type": "number", "minimum": 0,
                                                "maximum": backends.settings.max_wait_seconds}
        assert parameters["delay"]["schema"] == {"type": "number", "exclusiveMinimum": 0, "maximum": 30 * 24 * 3600}
        assert parameters["at"]["schema"]["format"] == "date-time"
        assert parameters["expires"]["schema"] == parameters["delay"]["schema"]
        assert re.match(parameters["after"]["schema"]["pattern"], "a1,b_2,c-3")
        key = parameters["Idempotency-Key"]["schema"]
        assert (key["type"], key["minLength"], key["maxLength"]) == ("string", 1, 255)
        callback = parameters["X-Callback-Url"]["schema"]
        assert (callback["type"], callback["format"], callback["maxLength"]) == ("string", "uri", 2048)


@pytest.mark.parametrize(("value", "valid"), [
    ("k", True), ("order-42:retry", True), ("a b", True), ("~" * 255, True),
    ("", False), (" ", False), ("~" * 256, False), ("caf\u00e9", False), ("tab\there", False),
])
def test_the_idempotency_key_schema_is_what_the_api_accepts(
    document: dict[str, Any], value: str, valid: bool
) -> None:
    schema = parameters_by_name(invocation_operations(document)[0])["Idempotency-Key"]["schema"]
    assert jsonschema_rs.validator_for(schema).is_valid(value) is valid
    try:
        check_key(value)
        accepted = True
    except MalformedRequest:
        accepted = False
    assert accepted is valid


@pytest.mark.parametrize(("value", "valid"), [
    ("2020-01-31T09:30:00Z", True), ("2020-01-31T09:30:00.25+02:00", True), ("2020-01-31T09:30:00-05:30", True),
    ("2020-01-31T09:30:00", False), ("2020-01-31", False), ("tomorrow", False),
])
def test_the_at_schema_is_what_the_api_accepts(document: dict[str, Any], value: str, valid: bool) -> None:
    schema = parameters_by_name(invocation_operations(document)[0])["at"]["schema"]
    assert jsonschema_rs.validator_for(schema, validate_formats=True).is_valid(value) is valid
    try:
        read_at(value)  # a time already passed is accepted (the job runs now)
        accepted = True
    except MalformedRequest:
        accepted = False
    assert accepted is valid


def test_every_invocation_documents_its_answers(document: dict[str, Any]) -> None:
    for operation in invocation_operations(document):
        responses = operation["responses"]
        assert set(responses) == {"200", "202", "400", "401", "403", "404", "409", "413", "415", "422", "429",
                                  "503", "default"}
        for status in ("200", "202"):
            headers = responses[status]["headers"]
            assert headers["Location"]["required"] is True
            assert headers["Idempotent-Replayed"] == {
                "description": headers["Idempotent-Replayed"]["description"], "required": False,
                "schema": {"type": "string", "enum": ["true"]},
            }
        conflict = responses["409"]["content"]["application/json"]["schema"]
        assert conflict["allOf"][1] == {"properties": {"error": {"enum": ["idempotency_conflict"]}}}
        assert "Idempotency-Key" in responses["409"]["description"]
        assert responses["429"]["headers"]["Retry-After"]["required"] is True
        assert responses["429"]["content"]["application/json"]["schema"]["allOf"][0] == {
            "$ref": "#/components/schemas/Error"
        }
        assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
        (callback,) = operation["callbacks"]["completion"].values()
        assert callback["post"]["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/JobView"
        }


def test_cancel_and_retry_are_described(document: dict[str, Any]) -> None:
    cancel = document["paths"]["/jobs/{job_id}/cancel"]["post"]
    retry = document["paths"]["/jobs/{job_id}/retry"]["post"]
    assert set(cancel["responses"]) == {"200", "401", "403", "404", "409", "503", "default"}
    assert set(retry["responses"]) == {"202", "401", "403", "404", "409", "422", "429", "503", "default"}
    assert cancel["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobView"}
    assert retry["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobView"}
    assert retry["responses"]["202"]["headers"]["Location"]["required"] is True
    for operation in (cancel, retry):
        assert operation["description"] and operation["summary"]
        assert operation["parameters"] == [{"name": "job_id", "in": "path", "required": True,
                                            "schema": {"type": "string", "minLength": 1}}]
        conflict = operation["responses"]["409"]["content"]["application/json"]["schema"]
        assert conflict["allOf"][1] == {"properties": {"error": {"enum": ["state_conflict"]}}}


def test_function_and_job_view_schemas_have_exactly_the_fields_the_api_sends(
    document: dict[str, Any], client: FlaskClient
) -> None:
    schemas = document["components"]["schemas"]
    function = schemas["Function"]
    described = client.get("/functions/simple_calculation").get_json()
    assert list(function["properties"]) == list(described)
    assert set(function["required"]) == set(described)
    assert function["additionalProperties"] is False
    for limit in ("concurrency", "max_queued"):
        assert function["properties"][limit]["anyOf"] == [{"type": "integer", "minimum": 1}, {"type": "null"}]
    job_view = schemas["JobView"]
    fields = [field.name for field in dataclasses.fields(JobView)]
    assert list(job_view["properties"]) == fields
    assert set(job_view["required"]) == set(fields)
    assert job_view["additionalProperties"] is False
    assert set(job_view["properties"]["artifacts"]["items"]["required"]) == {"name", "size", "media_type", "url"}
    assert job_view["properties"]["created_at"]["anyOf"][0] == {"type": "string", "format": "date-time"}


def test_every_operation_but_healthz_needs_the_bearer_key(document: dict[str, Any]) -> None:
    assert document["security"] == [{"bearerAuth": []}]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path == "/healthz":
                assert operation["security"] == [] and "401" not in operation["responses"]
                continue
            assert "security" not in operation, (method, path)
            assert "401" in operation["responses"], (method, path)


def test_real_responses_match_their_documented_schemas(client: FlaskClient, document: dict[str, Any]) -> None:
    job = client.post("/functions/simple_calculation/invocations", json={"expression": "1+1"})

    def check(component: str, body: Any) -> None:
        schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
        jsonschema_rs.validator_for(schema).validate(body)

    check("JobView", job.get_json())
    check("JobList", client.get("/jobs").get_json())
    check("FunctionList", client.get("/functions").get_json())
    check("Function", client.get("/functions/simple_calculation").get_json())
    check("WorkerList", client.get("/workers").get_json())
    check("QueueList", client.get("/queues").get_json())
    check("RequeueOutcome", client.post("/queues/failed/requeue").get_json())
    check("Error", client.get("/jobs/nope").get_json())
    check("Health", client.get("/healthz").get_json())


def test_a_route_we_know_nothing_of_still_gets_a_generic_operation(backends: Backends, registry: Registry) -> None:
    app = api.create_app({"RUNNER_SETTINGS": backends.settings, "RUNNER_BACKENDS": backends,
                          "RUNNER_REGISTRY": registry, "TESTING": True})

    def ping(token: int) -> dict[str, Any]:
        """Answer a ping."""
        return {"token": token}

    app.add_url_rule("/ping/<int:token>", "ping", ping, methods=["PUT"])
    document = app.test_client().get("/openapi.json").get_json()
    operation = document["paths"]["/ping/{token}"]["put"]
    assert operation["summary"] == "Answer a ping."
    assert operation["parameters"] == [{"name": "token", "in": "path", "required": True,
                                        "schema": {"type": "integer", "minimum": 0}}]
    # Under the global bearer security, and a PUT: refused from another site.
    assert set(operation["responses"]) == {"200", "401", "403", "default"}


def test_docs_page_uses_only_local_assets_that_exist(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "://" not in page and "//cdn" not in page  # nothing from another host
    urls = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(urls) >= 3
    for url in urls:
        assert url.startswith("/docs/assets/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.data) > 100
        assert asset.mimetype in ("text/css", "text/javascript", "application/javascript", "image/png"), url
    assert 'url: "/docs/openapi.json"' in page
    assert client.get("/docs/openapi.json").get_json() == client.get("/openapi.json").get_json()
    assert "validatorUrl: null" in page  # Swagger UI would otherwise call an online validator


@pytest.mark.parametrize("name", ["nope.js", "..%2Fflask_swagger_ui.py", "LICENSE", "index.html"])
def test_docs_serves_no_other_file(client: FlaskClient, name: str) -> None:
    response = client.get(f"/docs/assets/{name}")
    assert response.status_code == 404
    assert response.mimetype == "application/json"
