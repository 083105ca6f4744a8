"""Custom object schemas: ``/crm-object-schemas/v3/schemas`` (also served at ``/crm/v3/schemas``).

Creating a schema registers a custom object type in the portal: its records then go through
the same ``/crm/v3/objects/{objectType}`` endpoints (by ``2-…`` id, fully qualified name
``p<portal>_<name>`` or ``p_<name>``), its properties through the properties API, and its
associations (one per ``associatedObjects`` entry) through associations v4.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import Route

from .errors import ApiError, error_body, missing_scopes, validation_error
from .objecttypes import ObjectType
from .properties import PropertyDef, custom_object_properties
from .properties_api import property_from_body
from .routing import Call, api_route
from .search import ms_to_iso
from .state import SandboxState
from .store import PortalStore

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# HubSpot's default field type for a property type when the create body names none.
_DEFAULT_FIELD = {
    "bool": "booleancheckbox",
    "date": "date",
    "datetime": "date",
    "enumeration": "select",
    "number": "number",
    "phone_number": "phonenumber",
    "string": "text",
}


def _require(call: Call, action: str) -> None:
    scope = f"crm.schemas.custom.{action}"
    assert call.token is not None
    if scope not in call.token.scopes:
        raise missing_scopes([scope])


def schema_wire(store: PortalStore, ot: ObjectType) -> dict[str, Any]:
    s = ot.schema
    types = store.types
    assocs = []
    for d in sorted(types.assoc_defs.values(), key=lambda d: d.type_id):
        if d.from_type == ot.name and d.category != "HUBSPOT_DEFINED" and not d.label:
            assocs.append(
                {
                    "id": str(d.type_id),
                    "fromObjectTypeId": ot.type_id,
                    "toObjectTypeId": types.types[d.to_type].type_id,
                    "name": d.name,
                    "createdAt": s["createdAt"],
                    "updatedAt": s["updatedAt"],
                }
            )
    return {
        "id": ot.type_id.split("-", 1)[1],
        "objectTypeId": ot.type_id,
        "fullyQualifiedName": f"p{store.hub_id}_{ot.singular}",
        "name": ot.singular,
        "labels": s["labels"],
        "description": s.get("description", ""),
        "primaryDisplayProperty": s.get("primaryDisplayProperty"),
        "secondaryDisplayProperties": s.get("secondaryDisplayProperties", []),
        "requiredProperties": list(ot.required),
        "searchableProperties": list(ot.query_props),
        "properties": [p.to_wire() for p in store.properties[ot.name].values()],
        "associations": assocs,
        "metaType": "PORTAL_SPECIFIC",
        "archived": False,
        "createdAt": s["createdAt"],
        "updatedAt": s["updatedAt"],
    }


def _custom(call: Call) -> ObjectType:
    store = call.portal_store
    t = store.types.resolve(call.params["objectType"])
    if t is None or not store.type_def(t).custom:
        raise ApiError(
            404,
            error_body(f"Unable to find object type {call.params['objectType']}", "OBJECT_NOT_FOUND"),
        )
    return store.type_def(t)


def _associate_types(store: PortalStore, ot: ObjectType, target_raw: Any, name: str | None) -> int:
    target = store.types.resolve(str(target_raw))
    if target is None:
        raise validation_error(f"Unknown object type in associatedObjects: {target_raw!r}")
    if store.types.can_associate(ot.name, target):
        return store.types.default_assoc[(ot.name, target)]
    fwd, rev = store.types.new_assoc_id(), store.types.new_assoc_id()
    # UNSURE: the category HubSpot gives a custom object's unlabelled association types; the
    # labels API of real portals shows them as USER_DEFINED for custom objects.
    store.types.define_pair(
        ot.name,
        target,
        fwd,
        rev,
        "USER_DEFINED",
        None,
        None,
        name=name or f"{ot.singular}_to_{store.type_def(target).singular}",
    )
    return fwd


async def create_schema(call: Call) -> tuple[int, Any]:
    _require(call, "write")
    store = call.portal_store
    b = call.body if isinstance(call.body, dict) else {}
    name = b.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise validation_error("name is required: letters, digits and underscores, starting with a letter")
    if store.types.resolve(name) is not None or store.types.resolve(f"p_{name}") is not None:
        raise ApiError(409, error_body(f"Object type with name {name} already exists", "CONFLICT"))
    labels = b.get("labels")
    if not isinstance(labels, dict) or not labels.get("singular") or not labels.get("plural"):
        raise validation_error("labels.singular and labels.plural are required")
    raw_props = b.get("properties")
    if not isinstance(raw_props, list) or not raw_props:
        raise validation_error("properties must be a non-empty list")
    now = call.state.clock.now_ms()
    group = f"{name}_information"
    props: dict[str, PropertyDef] = custom_object_properties(group)
    for p in raw_props:
        if not isinstance(p, dict):
            raise validation_error("every property must be an object")
        p = {"groupName": group, **p}
        if isinstance(p.get("type"), str) and not p.get("fieldType"):
            p["fieldType"] = _DEFAULT_FIELD.get(p["type"], "text")
        prop = property_from_body(p, ms_to_iso(now))
        if prop.name in props:
            raise validation_error(f"Property {prop.name} is defined twice")
        props[prop.name] = prop
    if sum(p.has_unique_value for p in props.values()) > 10:
        raise validation_error("An object type may have at most 10 unique-value properties")
    required = b.get("requiredProperties") or []
    searchable = b.get("searchableProperties") or []
    display = b.get("primaryDisplayProperty")
    secondary = b.get("secondaryDisplayProperties") or []
    for what, names in (
        ("requiredProperties", required),
        ("searchableProperties", searchable),
        ("secondaryDisplayProperties", secondary),
        ("primaryDisplayProperty", [display] if display else []),
    ):
        if not isinstance(names, list) or any(n not in props for n in names):
            raise validation_error(f"{what} must name properties of the schema: {names}")
    associated = b.get("associatedObjects") or []
    if not isinstance(associated, list):
        raise validation_error("associatedObjects must be a list")
    for a in associated:
        if store.types.resolve(str(a)) is None:
            raise validation_error(f"Unknown object type in associatedObjects: {a!r}")
    type_id = store.types.new_custom_id()
    shown = [display] if display else []
    ot = ObjectType(
        type_id,
        type_id,
        name,
        name.upper(),
        None,
        tuple(dict.fromkeys(["hs_createdate", "hs_lastmodifieddate", "hs_object_id", *shown])),
        tuple(searchable) or tuple(shown),
        required=tuple(required),
        custom=True,
        schema={
            "labels": {"singular": labels["singular"], "plural": labels["plural"]},
            "description": b.get("description", ""),
            "primaryDisplayProperty": display,
            "secondaryDisplayProperties": list(secondary),
            "createdAt": ms_to_iso(now),
            "updatedAt": ms_to_iso(now),
        },
    )
    # Custom objects carry hs_createdate (like engagements) besides createdate.
    props["hs_createdate"] = PropertyDef(
        "hs_createdate", "Object create date/time", "datetime", "date", group
    )
    props["external_id"] = (
        PropertyDef(
            "external_id",
            "External ID",
            "string",
            "text",
            group,
            has_unique_value=True,
            hubspot_defined=False,
            description="Unique id of the record in the company's own system.",
        )
        if "external_id" not in props
        else props["external_id"]
    )
    store.add_type(ot, props)
    for a in associated:
        _associate_types(store, ot, a, None)
    return 201, schema_wire(store, ot)


async def list_schemas(call: Call) -> tuple[int, Any]:
    _require(call, "read")
    store = call.portal_store
    return 200, {"results": [schema_wire(store, t) for t in store.types.types.values() if t.custom]}


async def get_schema(call: Call) -> tuple[int, Any]:
    _require(call, "read")
    return 200, schema_wire(call.portal_store, _custom(call))


async def create_schema_association(call: Call) -> tuple[int, Any]:
    _require(call, "write")
    store = call.portal_store
    ot = _custom(call)
    b = call.body if isinstance(call.body, dict) else {}
    src = store.types.resolve(str(b.get("fromObjectTypeId", "")))
    if src != ot.name:
        raise validation_error("fromObjectTypeId must be the schema's object type")
    tid = _associate_types(store, ot, b.get("toObjectTypeId"), b.get("name"))
    d = store.types.assoc_defs[tid]
    return 201, {
        "id": str(tid),
        "fromObjectTypeId": ot.type_id,
        "toObjectTypeId": store.type_def(d.to_type).type_id,
        "name": d.name,
        "createdAt": ot.schema["createdAt"],
        "updatedAt": ot.schema["updatedAt"],
    }


async def delete_schema(call: Call) -> tuple[int, Any]:
    _require(call, "write")
    store = call.portal_store
    ot = _custom(call)
    if any(not o.archived for o in store.objects[ot.name].values()):
        raise validation_error(f"Object type {ot.type_id} still has records; archive them first")
    store.remove_type(ot.name)
    return 204, None


def routes(state: SandboxState) -> list[Route]:
    out: list[Route] = []
    for base in ("/crm-object-schemas/v3/schemas", "/crm/v3/schemas"):
        out += [
            api_route(state, "GET", base, list_schemas),
            api_route(state, "POST", base, create_schema),
            api_route(state, "GET", base + "/{objectType}", get_schema),
            api_route(state, "DELETE", base + "/{objectType}", delete_schema),
            api_route(state, "POST", base + "/{objectType}/associations", create_schema_association),
        ]
    return out
