"""The OpenAPI 3.1 description of the JSON API, generated from the route table.

Every route of :class:`~hal9999.server.routing.Router` appears with its path parameters,
query parameters, request body schema and answer schema (pydantic models' JSON schemas,
their definitions hoisted to ``components.schemas``), the bearer scheme and the common
error answer.
"""

from __future__ import annotations

from typing import Any

from hal9999 import __version__
from hal9999.server.routing import ApiRoute, Router, path_params

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable error code"},
                "message": {"type": "string"},
                "hint": {"type": ["string", "null"]},
            },
        }
    },
}
_ERRORS = {
    "400": "bad input",
    "401": "no valid bearer token",
    "404": "no such task, sandbox or route",
    "409": "the task is in a state that does not allow this",
    "413": "the body is too large",
    "431": "the request head is too large",
    "500": "a bug in hal (the daemon's log has the traceback)",
    "503": "too many connections waiting to authenticate, or hal's database locked or damaged",
    "507": "the disk holding hal's home is full",
}


def model_schema(model: Any, components: dict[str, Any]) -> dict[str, Any]:
    """A reference to ``model``'s JSON schema (a pydantic model or type adapter), its
    definitions added to ``components``."""
    ref = "#/components/schemas/{model}"
    if hasattr(model, "model_json_schema"):
        schema = model.model_json_schema(ref_template=ref)
        name = model.__name__
    else:  # a TypeAdapter (the event union)
        schema = model.json_schema(ref_template=ref)
        name = "Event"
    components.update(schema.pop("$defs", {}))
    components[name] = schema
    return {"$ref": ref.format(model=name)}


def _operation(route: ApiRoute, components: dict[str, Any]) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in path_params(route.path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        for name in route.query
    ]
    answer = route.response or {}
    if route.raw is not None:
        ok = {
            "description": "server-sent events; each `id:` is the event's global gseq",
            "content": {route.media_type: {"schema": {"type": "string"}}},
        }
    else:
        ok = {"description": "OK", "content": {"application/json": {"schema": answer}}}
    responses: dict[str, Any] = {"200": ok}
    for status, text in _ERRORS.items():
        responses[status] = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    operation: dict[str, Any] = {
        "summary": route.summary.splitlines()[0],
        "operationId": f"{route.method.lower()}_{route.path.strip('/').replace('/', '_')}"
        .replace("{", "").replace("}", ""),
        "responses": responses,
    }  # fmt: skip
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": route.body_schema()}},
        }
    return operation


def _with_branch_made(task: dict[str, Any]) -> None:
    """The API's task is its record and ``branch_made`` (:func:`task_doc.with_branch_made`)."""
    task["properties"]["branch"]["description"] = (
        "The name of the task's branch: the one its run uses (a retry or a resume needs it), "
        "made or not; see branch_made."
    )
    task["properties"]["branch_made"] = {
        "type": "boolean",
        "title": "Branch Made",
        "description": "Whether the branch named by branch was made: the task's work was "
        "brought back (at its base commit when the agent changed nothing); false for a task "
        "that failed or was cancelled before that, or has not got there yet.",
    }
    task["required"].append("branch_made")


def openapi_schema(router: Router) -> dict[str, Any]:
    """The OpenAPI document of every route of ``router`` (and of itself)."""
    from hal9999.events.models import EVENT_ADAPTER
    from hal9999.store import TaskRecord

    components: dict[str, Any] = {"Error": ERROR}
    model_schema(TaskRecord, components)
    _with_branch_made(components["TaskRecord"])
    model_schema(EVENT_ADAPTER, components)
    paths: dict[str, dict[str, Any]] = {}
    for route in router.routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    paths["/v1/openapi.json"] = {
        "get": {
            "summary": "This document.",
            "operationId": "get_v1_openapi",
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {}}}}
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "hal9999 daemon API", "version": __version__},
        "servers": [{"url": "http://127.0.0.1", "description": "the port in run/serve.json"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
