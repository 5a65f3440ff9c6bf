"""`GET /openapi.json`: an OpenAPI 3.1 document built from the app's routes and the registry.

Every route in the URL map becomes an operation (described in `api.openapi_operations` when we
know it, with a generic description otherwise), and every registered function gets its own
`POST /functions/<name>/invocations` whose request body is the function's input JSON Schema.
Response schemas (`api.openapi_schemas`) are generated from the dataclasses and models the views
serialize. Every operation but `/healthz` needs the bearer API key when keys are configured.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Flask, current_app
from werkzeug.routing import Rule

from api.openapi_operations import known_operation, refuse_other_sites, require_api_key
from api.openapi_schemas import COMPONENT_REF, DEFAULT_RESPONSE, component_schemas, json_response, ref
from api.state import runner_state
from runner.authoring.registry import Registry
from runner.authoring.spec import FunctionSpec
from runner.config import Settings

blueprint = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
API_VERSION = "0.1.0"
CACHE_EXTENSION = "runner_openapi_document"
# Routes that are not part of the JSON API: static files, the docs page, the dashboard (all its routes).
EXCLUDED_ENDPOINT_PREFIXES = ("static", "docs.", "rq_dashboard.")
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
# `<name>`, `<converter:name>` or `<converter(arguments):name>` in a Werkzeug rule.
RULE_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
CONVERTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer", "minimum": 0},
    "float": {"type": "number", "minimum": 0},
    "uuid": {"type": "string", "format": "uuid"},
}


def openapi_path(rule: Rule) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path of a Werkzeug rule (`/jobs/<job_id>` -> `/jobs/{job_id}`) and its path parameters."""
    parameters = []
    for match in RULE_ARGUMENT.finditer(rule.rule):
        schema = CONVERTER_SCHEMAS.get(match.group("converter") or "", {"type": "string", "minLength": 1})
        parameters.append({"name": match.group("name"), "in": "path", "required": True, "schema": dict(schema)})
    return RULE_ARGUMENT.sub(lambda match: "{" + match.group("name") + "}", rule.rule), parameters


def _documented_rules(app: Flask) -> Iterable[Rule]:
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        if rule.endpoint.startswith(EXCLUDED_ENDPOINT_PREFIXES):
            continue
        yield rule


def _generic_operation(app: Flask, rule: Rule, method: str) -> dict[str, Any]:
    view = app.view_functions.get(rule.endpoint)
    doc = (view.__doc__ or "").strip().splitlines() if view else []
    return {
        "summary": doc[0] if doc else f"{method} {rule.rule}",
        "responses": {"200": json_response("Success.", {})},
    }


def _route_operations(app: Flask, settings: Settings) -> dict[str, dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = {}
    for rule in _documented_rules(app):
        path, parameters = openapi_path(rule)
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            operation = known_operation(method, path, settings) or _generic_operation(app, rule, method)
            operation.setdefault("operationId", f"{rule.endpoint.replace('.', '_')}_{method.lower()}")
            if parameters:
                operation["parameters"] = parameters + operation.get("parameters", [])
            paths.setdefault(path, {})[method.lower()] = operation
    return paths


def _rewrite_refs(node: Any, names: dict[str, str]) -> Any:
    """Point `#/$defs/X` references at the components the definitions moved to."""
    if isinstance(node, dict):
        rewritten = {key: _rewrite_refs(value, names) for key, value in node.items()}
        target = rewritten.get("$ref")
        if isinstance(target, str) and target.startswith("#/$defs/"):
            rewritten["$ref"] = COMPONENT_REF.format(model=names[target.removeprefix("#/$defs/")])
        return rewritten
    if isinstance(node, list):
        return [_rewrite_refs(item, names) for item in node]
    return node


def _claim(components: dict[str, Any], wanted: str, schema: dict[str, Any], prefix: str) -> str:
    """A component name for `schema`: `wanted` unless another schema holds it already."""
    name = wanted
    number = 1
    while name in components and components[name] != schema:
        number += 1
        name = f"{prefix}_{wanted}" if number == 2 else f"{prefix}_{wanted}_{number}"
    components[name] = schema
    return name


def input_schema_component(spec: FunctionSpec, components: dict[str, Any]) -> str:
    """Move a function's input schema (and its `$defs`) into components; return its component name."""
    schema = spec.input_schema()  # a copy of its own: popping `$defs` leaves the spec's intact
    definitions: dict[str, Any] = schema.pop("$defs", {})
    title = str(schema.get("title") or f"{spec.name}_input")
    # Names first (definitions may refer to each other), then the rewritten bodies.
    names = {name: name if name not in components else f"{title}_{name}" for name in definitions}
    for name, body in definitions.items():
        names[name] = _claim(components, names[name], _rewrite_refs(body, names), title)
    return _claim(components, title, _rewrite_refs(schema, names), spec.name)


def invocation_operation(spec: FunctionSpec, components: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """`POST /functions/<name>/invocations` for one function, its input schema as the body."""
    generic = known_operation("POST", "/functions/{name}/invocations", settings)
    assert generic is not None
    input_name = input_schema_component(spec, components)
    policy = f"Queue `{spec.queue}`, timeout {spec.timeout} s, {spec.retries} retries"
    if spec.backoff:
        policy += f" after {', '.join(str(seconds) for seconds in spec.backoff)} s"
    if spec.concurrency is not None:
        policy += f"; at most {spec.concurrency} running at once"
    if spec.max_queued is not None:
        policy += f"; at most {spec.max_queued} waiting (429 beyond)"
    return {
        **generic,
        "operationId": f"invoke_{spec.name}",
        "summary": spec.description or f"Invoke {spec.name}",
        "description": f"{policy}.\n\n{generic['description']}",
        "tags": ["functions"],
        "requestBody": {
            "required": bool(components[input_name].get("required")),
            "content": {"application/json": {"schema": ref(input_name)}},
        },
    }


def build_openapi(app: Flask, registry: Registry, settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app` with the functions of `registry`."""
    components = component_schemas()
    paths = _route_operations(app, settings)
    for spec in registry:
        paths[f"/functions/{spec.name}/invocations"] = {"post": invocation_operation(spec, components, settings)}
    # Every operation, once: the 401 under the bearer security, the 403 of a state-changing request
    # from another site, and the Error shape for any other status.
    for operations in paths.values():
        for method, operation in operations.items():
            require_api_key(operation)
            refuse_other_sites(method, operation)
            operation["responses"].setdefault("default", DEFAULT_RESPONSE)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Async Task Runner",
            "version": API_VERSION,
            "description": "Serverless-style functions on RQ: invoke a function, follow its job, read the history.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from RUNNER_API_KEYS or RUNNER_API_KEYS_FILE (required only when one "
                                   "of them is set; never for /healthz).",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }


@blueprint.get("/openapi.json")
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of this API."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    document = app.extensions.get(CACHE_EXTENSION)
    if document is None:
        state = runner_state()
        # Built once per process: routes and functions do not change while the app runs.
        document = build_openapi(app, state.registry, state.backends.settings)
        app.extensions[CACHE_EXTENSION] = document
    return dict(document)
