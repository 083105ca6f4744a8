"""Pipelines and stages of deals and tickets (``/crm/v3/pipelines/{objectType}``).

A deal's ``pipeline``/``dealstage`` and a ticket's ``hs_pipeline``/``hs_pipeline_stage`` must
name a pipeline of the portal and one of that pipeline's stages; otherwise the write gets a 400
that names both, as HubSpot's does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ApiError, error_body, validation_error
from .properties import PIPELINE_PROPERTIES
from .search import ms_to_iso

if TYPE_CHECKING:
    from starlette.routing import Route

    from .routing import Call
    from .state import SandboxState

# The pipeline a record lands in when a write names none.
DEFAULT_PIPELINE = {"deals": "default", "tickets": "0"}


@dataclass(slots=True)
class Stage:
    id: str
    label: str
    display_order: int
    metadata: dict[str, str]
    created_at: int
    updated_at: int
    archived: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "displayOrder": self.display_order,
            "metadata": self.metadata,
            "createdAt": ms_to_iso(self.created_at),
            "updatedAt": ms_to_iso(self.updated_at),
            "archived": self.archived,
            "writePermissions": "CRM_PERMISSIONS_ENFORCEMENT",
        }


@dataclass(slots=True)
class Pipeline:
    id: str
    label: str
    display_order: int
    created_at: int
    updated_at: int
    stages: list[Stage] = field(default_factory=list)
    archived: bool = False

    def stage(self, stage_id: str) -> Stage | None:
        return next((s for s in self.stages if s.id == stage_id and not s.archived), None)

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "displayOrder": self.display_order,
            "stages": [s.to_wire() for s in self.stages if not s.archived],
            "createdAt": ms_to_iso(self.created_at),
            "updatedAt": ms_to_iso(self.updated_at),
            "archived": self.archived,
        }


_DEAL_STAGES = (
    ("appointmentscheduled", "Appointment Scheduled", "0.2", "false"),
    ("qualifiedtobuy", "Qualified To Buy", "0.4", "false"),
    ("presentationscheduled", "Presentation Scheduled", "0.6", "false"),
    ("decisionmakerboughtin", "Decision Maker Bought-In", "0.8", "false"),
    ("contractsent", "Contract Sent", "0.9", "false"),
    ("closedwon", "Closed Won", "1.0", "true"),
    ("closedlost", "Closed Lost", "0.0", "true"),
)
_TICKET_STAGES = (
    ("1", "New", "OPEN"),
    ("2", "Waiting on contact", "OPEN"),
    ("3", "Waiting on us", "OPEN"),
    ("4", "Closed", "CLOSED"),
)


def default_pipelines(now: int) -> dict[str, dict[str, Pipeline]]:
    """HubSpot's default "Sales Pipeline" (deals) and "Support Pipeline" (tickets)."""
    deals = Pipeline("default", "Sales Pipeline", 0, now, now)
    for i, (sid, label, prob, closed) in enumerate(_DEAL_STAGES):
        deals.stages.append(Stage(sid, label, i, {"isClosed": closed, "probability": prob}, now, now))
    tickets = Pipeline("0", "Support Pipeline", 0, now, now)
    for i, (sid, label, state) in enumerate(_TICKET_STAGES):
        tickets.stages.append(Stage(sid, label, i, {"ticketState": state}, now, now))
    return {"deals": {"default": deals}, "tickets": {"0": tickets}}


def check_pipeline(
    object_type: str,
    pipes: dict[str, Pipeline],
    props: dict[str, str],
    current: dict[str, str] | None,
    creating: bool,
) -> None:
    """Raises a 400 naming pipeline and stage when the values don't fit the portal's pipelines."""
    pprop, sprop = PIPELINE_PROPERTIES[object_type]
    if pprop not in props and sprop not in props and not creating:
        return
    pid = props.get(pprop) or (current or {}).get(pprop) or DEFAULT_PIPELINE[object_type]
    pipe = pipes.get(pid)
    if pipe is None or pipe.archived:
        raise validation_error(
            f"{pid} is not a valid pipeline of {object_type}: the pipeline does not exist",
            errors=[
                {
                    "message": f"pipeline {pid} does not exist",
                    "code": "INVALID_OPTION",
                    "context": {"propertyName": [pprop]},
                }
            ],
        )
    sid = props.get(sprop)
    if sid is None and pprop in props and current is not None:
        sid = current.get(sprop)  # moving pipelines keeps the stage only if it exists there
    if sid and pipe.stage(sid) is None:
        raise validation_error(
            f"{sid} is not a valid stage of pipeline {pid} ({pipe.label}); valid stages: "
            f"{[s.id for s in pipe.stages if not s.archived]}",
            errors=[
                {
                    "message": f"stage {sid} is not in pipeline {pid}",
                    "code": "INVALID_OPTION",
                    "context": {"propertyName": [sprop], "pipeline": [pid], "stage": [sid]},
                }
            ],
        )


# ---- API --------------------------------------------------------------------------------------------


def _pipes(call: Call) -> tuple[str, dict[str, Pipeline]]:
    t = call.object_type()
    pipes = call.portal_store.pipelines.get(t)
    if pipes is None:
        raise validation_error(f"Object type {t} has no pipelines; only deals and tickets have")
    return t, pipes


def _pipeline(call: Call) -> Pipeline:
    _, pipes = _pipes(call)
    p = pipes.get(call.params["pipelineId"])
    if p is None or p.archived:
        raise ApiError(
            404, error_body(f"Unable to find pipeline {call.params['pipelineId']}", "OBJECT_NOT_FOUND")
        )
    return p


def _stage_from(body: dict[str, Any], n: int, now: int, taken: set[str]) -> Stage:
    if not isinstance(body.get("label"), str) or not body["label"]:
        raise validation_error("every stage needs a label")
    meta = body.get("metadata") or {}
    if not isinstance(meta, dict):
        raise validation_error("metadata must be an object")
    sid = str(body.get("stageId") or body.get("id") or "")
    if not sid:
        sid = str(max([int(x) for x in taken if x.isdigit()] + [1000]) + 1)
    taken.add(sid)
    return Stage(
        sid,
        body["label"],
        int(body.get("displayOrder", n)),
        {str(k): str(v) for k, v in meta.items()},
        now,
        now,
    )


async def list_pipelines(call: Call) -> tuple[int, Any]:
    _, pipes = _pipes(call)
    return 200, {"results": [p.to_wire() for p in pipes.values() if not p.archived]}


async def get_pipeline(call: Call) -> tuple[int, Any]:
    return 200, _pipeline(call).to_wire()


async def create_pipeline(call: Call) -> tuple[int, Any]:
    _, pipes = _pipes(call)
    body = call.body if isinstance(call.body, dict) else {}
    if not isinstance(body.get("label"), str) or not isinstance(body.get("stages"), list):
        raise validation_error("label and stages are required")
    if any(p.label == body["label"] and not p.archived for p in pipes.values()):
        raise ApiError(409, error_body(f"A pipeline labelled {body['label']!r} already exists", "CONFLICT"))
    now = call.state.clock.now_ms()
    pid = str(body.get("pipelineId") or max([int(x) for x in pipes if x.isdigit()] + [100]) + 1)
    if pid in pipes:
        raise ApiError(409, error_body(f"Pipeline {pid} already exists", "CONFLICT"))
    taken: set[str] = set()
    p = Pipeline(pid, body["label"], int(body.get("displayOrder", len(pipes))), now, now)
    p.stages = [_stage_from(s, n, now, taken) for n, s in enumerate(body["stages"])]
    pipes[pid] = p
    return 201, p.to_wire()


async def archive_pipeline(call: Call) -> tuple[int, Any]:
    p = _pipeline(call)
    p.archived = True
    return 204, None


async def list_stages(call: Call) -> tuple[int, Any]:
    return 200, {"results": [s.to_wire() for s in _pipeline(call).stages if not s.archived]}


async def create_stage(call: Call) -> tuple[int, Any]:
    p = _pipeline(call)
    body = call.body if isinstance(call.body, dict) else {}
    now = call.state.clock.now_ms()
    s = _stage_from(body, len(p.stages), now, {x.id for x in p.stages})
    p.stages.append(s)
    p.updated_at = now
    return 201, s.to_wire()


async def get_stage(call: Call) -> tuple[int, Any]:
    s = _pipeline(call).stage(call.params["stageId"])
    if s is None:
        raise ApiError(404, error_body(f"Unable to find stage {call.params['stageId']}", "OBJECT_NOT_FOUND"))
    return 200, s.to_wire()


def routes(state: SandboxState) -> list[Route]:
    from .routing import api_route

    base = "/crm/v3/pipelines/{objectType}"
    return [
        api_route(state, "GET", base, list_pipelines, scope="read"),
        api_route(state, "POST", base, create_pipeline, scope="write"),
        api_route(state, "GET", base + "/{pipelineId}", get_pipeline, scope="read"),
        api_route(state, "DELETE", base + "/{pipelineId}", archive_pipeline, scope="write"),
        api_route(state, "GET", base + "/{pipelineId}/stages", list_stages, scope="read"),
        api_route(state, "POST", base + "/{pipelineId}/stages", create_stage, scope="write"),
        api_route(state, "GET", base + "/{pipelineId}/stages/{stageId}", get_stage, scope="read"),
    ]
