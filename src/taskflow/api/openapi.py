"""Makes the OpenAPI document state exactly the rules the API enforces.

Litestar generates the document from the handlers. For the body structs it drops some
msgspec constraints (dict key patterns and sizes, ``forbid_unknown_fields``, bounds on
optional numbers), so their component schemas are replaced with msgspec's own JSON
Schema of the same structs, the one decoding enforces.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.spec import Schema
from litestar.openapi.spec.enums import OpenAPIType

from taskflow.api import overview_schemas, schemas
from taskflow.api.events import JobEvent
from taskflow.states import JobState

_BODIES = (schemas.JobSpec, schemas.BatchSpec, schemas.BatchCreated, schemas.JobOut,
           schemas.JobPage, schemas.AttemptList, schemas.Problem, schemas.Health,
           schemas.WorkflowSpec, schemas.WorkflowCreated, schemas.WorkflowOut, JobEvent,
           overview_schemas.QueuesOut, overview_schemas.WorkflowPage,
           overview_schemas.WorkflowEdges, overview_schemas.JobLinks)

# Each event of a stream: ``event`` names the state, ``data`` is JSON (the component
# named here), ``id`` resumes (Last-Event-ID); the first event carries ``retry`` (the
# reconnection delay). Heartbeats are comment lines, not events.
_STREAMS = {
    "/tasks/{job_id}/events": ([s.value for s in JobState], "JobEvent"),
    "/workflows/{workflow_id}/events": ([s.value for s in schemas.WorkflowState],
                                        "WorkflowOut"),
}


def _event_schema(states: list[str], component: str) -> dict[str, Any]:
    return {"type": "object", "required": ["event", "id", "data"], "properties": {
        "event": {"type": "string", "enum": states},
        "id": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"$ref": f"#/components/schemas/{component}"}},
        "retry": {"type": "integer"}}}


class _JsonSchema(Schema):
    """A component given as a finished JSON Schema document."""

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__()
        self.document = document

    def to_schema(self) -> dict[str, Any]:
        return self.document


def use_msgspec_schemas(app: Litestar, known_tasks: Collection[str] | None,
                        queues: Collection[str] | None = None,
                        max_wait: float | None = None) -> None:
    """``known_tasks``: when only those are accepted, the schema lists them; ``queues``
    (the declared ones) likewise; ``max_wait`` bounds every ``wait`` parameter."""
    _, components = msgspec.json.schema_components(
        _BODIES, ref_template="#/components/schemas/{name}")
    openapi = app.openapi_schema
    registry = openapi.components.schemas
    if registry is None:
        registry = openapi.components.schemas = {}
    if known_tasks is not None:
        for spec in ("JobSpec", "WorkflowJobSpec"):
            components[spec]["properties"]["task"]["enum"] = sorted(known_tasks)
    if queues is not None:
        for spec in ("JobSpec", "WorkflowJobSpec"):
            components[spec]["properties"]["queue"]["enum"] = sorted(queues)
    for name, document in components.items():
        registry[name] = _JsonSchema(document)
    for path, (states, component) in _STREAMS.items():
        item = (openapi.paths or {}).get(path)
        response = item.get.responses.get("200") if item and item.get and item.get.responses \
            else None
        content = getattr(response, "content", None) or {}
        if "text/event-stream" in content:
            content["text/event-stream"].schema = _JsonSchema(_event_schema(states, component))
    if max_wait is not None:
        for item in (openapi.paths or {}).values():
            for operation in (item.get, item.post):
                for param in (operation.parameters or []) if operation else []:
                    if param.name == "wait" and isinstance(param.schema, Schema):
                        _bound_wait(param.schema, max_wait)


def _bound_wait(schema: Schema, max_wait: float) -> None:
    """``wait`` is ``number | null``: bound its number branch by ``api.max_wait``."""
    for branch in schema.one_of or [schema]:
        if isinstance(branch, Schema) and branch.type == OpenAPIType.NUMBER:
            branch.exclusive_minimum = 0
            branch.maximum = max_wait
