"""Random JSON bodies against every registered function: never a 5xx, and nothing invalid is enqueued.

Bodies are arbitrary JSON values, objects built from the function's own field names (so they
reach the signature's checks rather than stopping at "not an object"), and now and then the
non-standard constants Python's json module writes (NaN, Infinity), which are not JSON.
"""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rq.job import Job
from rq.serializers import JSONSerializer

from runner.authoring.registry import Registry
from runner.authoring.spec import FunctionSpec
from runner.services.backends import Backends

FUNCTIONS = Registry.discover("functions")
EXAMPLES_PER_FUNCTION = 200
# A refusal of bad input is one of these; anything else (above all a 5xx) is a bug.
REFUSALS = frozenset({400, 413, 415, 422})

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def shaped_like(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of the JSON Schema type a field declares (often valid, often just out of bounds)."""
    if "anyOf" in schema:
        return st.one_of([shaped_like(option) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
    if kind == "integer":
        return st.integers(schema.get("minimum", -1000) - 1, schema.get("maximum", 1000) + 1)
    if kind == "number":
        return st.floats(schema.get("minimum", -1e6), schema.get("maximum", 1e6), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(shaped_like(schema.get("items", {})), max_size=3)
    return VALUES


def bodies(spec: FunctionSpec) -> st.SearchStrategy[str]:
    """Request bodies for `spec`: any JSON, objects over its fields (loosely or well typed), non-JSON constants."""
    schema = spec.input_schema()
    properties: dict[str, Any] = schema.get("properties", {})
    names = sorted(properties) or ["x"]
    loose = st.dictionaries(st.sampled_from(names) | st.text(max_size=12), VALUES, max_size=len(names) + 1)
    required = set(schema.get("required", []))
    typed = st.fixed_dictionaries(
        {name: shaped_like(properties[name]) for name in sorted(required)},
        optional={name: shaped_like(properties[name]) for name in names if name in properties and name not in required},
    )
    not_json = st.dictionaries(st.sampled_from(names), st.sampled_from([float("nan"), float("inf")]), min_size=1)
    return st.one_of(VALUES, loose, typed, typed, not_json).map(json.dumps)


def job_ids(connection: fakeredis.FakeRedis) -> set[str]:
    return {key.decode().removeprefix("rq:job:") for key in connection.scan_iter("rq:job:*")}


@pytest.mark.parametrize("name", [spec.name for spec in FUNCTIONS])
@settings(
    max_examples=EXAMPLES_PER_FUNCTION,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_json_is_accepted_valid_or_refused_cleanly(
    name: str, data: Any, client: FlaskClient, connection: fakeredis.FakeRedis, backends: Backends
) -> None:
    spec = FUNCTIONS.get(name)
    body = data.draw(bodies(spec), label="body")
    before = job_ids(connection)
    response = client.post(f"/functions/{name}/invocations", data=body, content_type="application/json")
    event(f"status {response.status_code}")  # shown by --hypothesis-show-statistics
    assert response.status_code == 202 or response.status_code in REFUSALS, (
        response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/json"
    enqueued = job_ids(connection) - before
    if response.status_code != 202:
        assert enqueued == set(), "a refused invocation reached Redis"
        return
    assert enqueued == {response.get_json()["id"]}
    job = Job.fetch(enqueued.pop(), connection=connection, serializer=JSONSerializer)
    # What was enqueued is exactly what validation returns for it: it passes validation again, unchanged.
    assert spec.validate(job.args[1], backends.validation_context()) == job.args[1]
