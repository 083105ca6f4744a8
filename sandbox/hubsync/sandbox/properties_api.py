"""Properties API: HubSpot's default properties plus custom ones (``hasUniqueValue`` included)."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from .errors import ApiError, error_body, validation_error
from .properties import PropertyDef, PropertyGroup
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


def property_from_body(b: dict[str, Any], now_iso: str) -> PropertyDef:
    """A property definition from a create body (properties API and schema creation)."""
    missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not b.get(k)]
    if missing:
        raise validation_error(f"Missing required fields: {missing}")
    name, typ, field_type = b["name"], b["type"], b["fieldType"]
    if typ not in TYPES:
        raise validation_error(f"Unknown property type {typ}; one of {sorted(TYPES)}")
    if field_type not in TYPES[typ]:
        raise validation_error(f"fieldType {field_type} is not valid for type {typ}")
    options = [
        {
            "label": o.get("label", o.get("value")),
            "value": o["value"],
            "displayOrder": o.get("displayOrder", i),
            "hidden": bool(o.get("hidden", False)),
        }
        for i, o in enumerate(b.get("options") or [])
    ]
    return PropertyDef(
        name,
        b["label"],
        typ,
        field_type,
        b["groupName"],
        has_unique_value=bool(b.get("hasUniqueValue")),
        hubspot_defined=False,
        hidden=bool(b.get("hidden", False)),
        description=b.get("description", ""),
        options=options,
        created_at=now_iso,
        updated_at=now_iso,
    )


async def create_property(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    store = call.portal_store
    b = call.body if isinstance(call.body, dict) else {}
    prop = property_from_body(b, ms_to_iso(call.state.clock.now_ms()))
    if prop.name in store.properties[t]:
        raise ApiError(
            409, error_body(f"Property named '{prop.name}' already exists.", "OBJECT_ALREADY_EXISTS")
        )
    if prop.group_name not in store.groups[t]:
        raise validation_error(f"Property group {prop.group_name} does not exist")
    if prop.has_unique_value and sum(p.has_unique_value for p in store.properties[t].values()) >= MAX_UNIQUE:
        raise validation_error(f"An object type may have at most {MAX_UNIQUE} unique-value properties")
    store.add_property(t, prop)
    return 201, prop.to_wire()


async def batch_read_properties(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    store = call.portal_store
    b = call.body if isinstance(call.body, dict) else {}
    inputs = b.get("inputs")
    if not isinstance(inputs, list):
        raise validation_error("inputs is required")
    now = ms_to_iso(call.state.clock.now_ms())
    results, missing = [], []
    for i in inputs:
        name = str((i or {}).get("name", "")) if isinstance(i, dict) else str(i)
        p = store.properties[t].get(name)
        if p is None:
            missing.append(name)
        else:
            results.append(p.to_wire())
    body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now}
    if missing:
        body["numErrors"] = 1
        body["errors"] = [
            {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": f"Unable to find properties {missing}",
                "context": {"names": missing},
                "links": {},
                "errors": [],
            }
        ]
        return 207, body
    return 200, body


# ---- groups ------------------------------------------------------------------------------------------


def _group(call: Call) -> tuple[str, PropertyGroup]:
    t = call.object_type()
    g = call.portal_store.groups[t].get(call.params["groupName"])
    if g is None:
        raise ApiError(
            404, error_body(f"Unable to find property group {call.params['groupName']}", "OBJECT_NOT_FOUND")
        )
    return t, g


async def list_groups(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    return 200, {"results": [g.to_wire() for g in call.portal_store.groups[t].values()]}


async def get_group(call: Call) -> tuple[int, Any]:
    return 200, _group(call)[1].to_wire()


async def create_group(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    groups = call.portal_store.groups[t]
    b = call.body if isinstance(call.body, dict) else {}
    name, label = b.get("name"), b.get("label")
    if not isinstance(name, str) or not name or not isinstance(label, str) or not label:
        raise validation_error("name and label are required")
    if name in groups:
        raise ApiError(409, error_body(f"Property group {name} already exists", "OBJECT_ALREADY_EXISTS"))
    g = PropertyGroup(name, label, int(b.get("displayOrder", -1)))
    groups[name] = g
    return 201, g.to_wire()


async def update_group(call: Call) -> tuple[int, Any]:
    _, g = _group(call)
    b = call.body if isinstance(call.body, dict) else {}
    if isinstance(b.get("label"), str):
        g.label = b["label"]
    if isinstance(b.get("displayOrder"), int):
        g.display_order = b["displayOrder"]
    return 200, g.to_wire()


async def archive_group(call: Call) -> tuple[int, Any]:
    t, g = _group(call)
    if any(p.group_name == g.name for p in call.portal_store.properties[t].values()):
        raise validation_error(f"Property group {g.name} still has properties")
    del call.portal_store.groups[t][g.name]
    return 204, None


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
        api_route(state, "POST", base + "/batch/read", batch_read_properties, scope="schema.read"),
        api_route(state, "GET", base + "/groups", list_groups, scope="schema.read"),
        api_route(state, "POST", base + "/groups", create_group, scope="schema.write"),
        api_route(state, "GET", base + "/groups/{groupName}", get_group, scope="schema.read"),
        api_route(state, "PATCH", base + "/groups/{groupName}", update_group, scope="schema.write"),
        api_route(state, "DELETE", base + "/groups/{groupName}", archive_group, scope="schema.write"),
        api_route(state, "GET", base + "/{propertyName}", get_property, scope="schema.read"),
        api_route(state, "PATCH", base + "/{propertyName}", update_property, scope="schema.write"),
        api_route(state, "DELETE", base + "/{propertyName}", archive_property, scope="schema.write"),
    ]
