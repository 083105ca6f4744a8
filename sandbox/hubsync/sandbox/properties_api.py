"""Properties API: HubSpot's default properties plus custom ones (``hasUniqueValue`` included)."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from .errors import ApiError, error_body, validation_error
from .properties import PropertyDef
from .routing import Call, api_route
from .search import ms_to_iso
from .state import SandboxState

TYPES = {
    "bool": {"booleancheckbox", "checkbox", "select", "radio", "calculation_equation"},
    "date": {"date"},
    "datetime": {"date"},
    "enumeration": {"booleancheckbox", "checkbox", "radio", "select", "calculation_equation"},
    "number": {"number", "calculation_equation"},
    "phone_number": {"phonenumber"},
    "string": {"file", "text", "textarea", "calculation_equation", "html", "phonenumber"},
}
# HubSpot allows at most ten unique-value properties per object type.
MAX_UNIQUE = 10


def _missing(name: str) -> ApiError:
    return ApiError(404, error_body(f"Unable to find property {name}", "OBJECT_NOT_FOUND"))


async def list_properties(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    return 200, {"results": [p.to_wire() for p in call.portal_store.properties[t].values()]}


async def get_property(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    p = call.portal_store.properties[t].get(call.params["propertyName"])
    if p is None:
        raise _missing(call.params["propertyName"])
    return 200, p.to_wire()


async def create_property(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    store = call.portal_store
    b = call.body if isinstance(call.body, dict) else {}
    missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not b.get(k)]
    if missing:
        raise validation_error(f"Missing required fields: {missing}")
    name, typ, field_type = b["name"], b["type"], b["fieldType"]
    if typ not in TYPES:
        raise validation_error(f"Unknown property type {typ}; one of {sorted(TYPES)}")
    if field_type not in TYPES[typ]:
        raise validation_error(f"fieldType {field_type} is not valid for type {typ}")
    if name in store.properties[t]:
        raise ApiError(409, error_body(f"Property named '{name}' already exists.", "OBJECT_ALREADY_EXISTS"))
    unique = bool(b.get("hasUniqueValue"))
    if unique and sum(p.has_unique_value for p in store.properties[t].values()) >= MAX_UNIQUE:
        raise validation_error(f"An object type may have at most {MAX_UNIQUE} unique-value properties")
    options = [
        {
            "label": o.get("label", o.get("value")),
            "value": o["value"],
            "displayOrder": o.get("displayOrder", i),
            "hidden": bool(o.get("hidden", False)),
        }
        for i, o in enumerate(b.get("options") or [])
    ]
    now = ms_to_iso(call.state.clock.now_ms())
    prop = PropertyDef(
        name,
        b["label"],
        typ,
        field_type,
        b["groupName"],
        has_unique_value=unique,
        hubspot_defined=False,
        hidden=bool(b.get("hidden", False)),
        description=b.get("description", ""),
        options=options,
        created_at=now,
        updated_at=now,
    )
    store.add_property(t, prop)
    return 201, prop.to_wire()


async def update_property(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    p = call.portal_store.properties[t].get(call.params["propertyName"])
    if p is None:
        raise _missing(call.params["propertyName"])
    if p.hubspot_defined:
        raise validation_error(f"{p.name} is a HubSpot-defined property and can't be changed")
    b = call.body if isinstance(call.body, dict) else {}
    for key, attr in (("label", "label"), ("description", "description"), ("groupName", "group_name")):
        if key in b:
            setattr(p, attr, b[key])
    if "options" in b:
        p.options = [
            {"label": o.get("label"), "value": o["value"], "displayOrder": i, "hidden": False}
            for i, o in enumerate(b["options"])
        ]
    p.updated_at = ms_to_iso(call.state.clock.now_ms())
    return 200, p.to_wire()


async def archive_property(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    store = call.portal_store
    p = store.properties[t].get(call.params["propertyName"])
    if p is None:
        raise _missing(call.params["propertyName"])
    if p.hubspot_defined:
        raise validation_error(f"{p.name} is a HubSpot-defined property and can't be archived")
    del store.properties[t][p.name]
    store.unique[t].pop(p.name, None)
    return 204, None


def routes(state: SandboxState) -> list[Route]:
    base = "/crm/v3/properties/{objectType}"
    return [
        api_route(state, "GET", base, list_properties, scope="schema.read"),
        api_route(state, "POST", base, create_property, scope="schema.write"),
        api_route(state, "GET", base + "/{propertyName}", get_property, scope="schema.read"),
        api_route(state, "PATCH", base + "/{propertyName}", update_property, scope="schema.write"),
        api_route(state, "DELETE", base + "/{propertyName}", archive_property, scope="schema.write"),
    ]
