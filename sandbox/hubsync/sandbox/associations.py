"""Associations v4: default associations, labelled (typed) ones, batch create/read/archive."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from .errors import ApiError, error_body, validation_error
from .objecttypes import AssociationDef
from .routing import Call, api_route
from .search import ms_to_iso
from .state import SandboxState
from .store import PortalStore


def v3_type_name(store: PortalStore, ft: str, tt: str, type_id: int) -> str:
    """CRM v3's name of an association type: ``contact_to_company`` (primary), ``…_unlabeled``,
    or a custom label's name."""
    types = store.types
    base = f"{types.types[ft].singular}_to_{types.types[tt].singular}"
    d = types.assoc_defs.get(type_id)
    if d is not None and d.category == "USER_DEFINED" and d.label:
        return d.name or d.label
    if d is not None and d.label == "Primary":
        return base
    has_primary = any(x.label == "Primary" for x in types.defs_for(ft, tt))
    return base + "_unlabeled" if has_primary else base


def _spec(store: PortalStore, type_id: int) -> dict[str, Any]:
    d = store.types.assoc_defs[type_id]
    out: dict[str, Any] = {"category": d.category, "typeId": type_id}
    # The v4 spec types ``label`` as a string (not nullable, not required): an unlabelled
    # type leaves it out rather than sending null.
    if d.label is not None:
        out["label"] = d.label
    return out


def _types(call: Call) -> tuple[str, str]:
    keys = (
        ("fromObjectType", "toObjectType")
        if "fromObjectType" in call.params
        else ("objectType", "toObjectType")
    )
    ft, tt = call.object_type(keys[0]), call.object_type(keys[1])
    if not call.portal_store.types.can_associate(ft, tt):
        raise validation_error(f"{ft} can't be associated with {tt}")
    return ft, tt


def _exists(call: Call, t: str, oid: Any) -> int:
    key = str(oid)
    if call.portal_store.get(t, key) is None:
        upper = call.portal_store.type_def(t).upper
        raise ApiError(
            404 if call.batch_size is None else 400,
            error_body(f"{upper.title()} {key} does not exist", "OBJECT_NOT_FOUND", context={"id": [key]}),
        )
    return int(key)


def _check_type_ids(store: PortalStore, ft: str, tt: str, types: list[dict[str, Any]]) -> set[int]:
    out = set()
    for t in types:
        try:
            tid = int(t["associationTypeId"])
        except (KeyError, TypeError, ValueError):
            raise validation_error("every type needs an associationTypeId") from None
        d = store.types.assoc_defs.get(tid)
        if d is None or (d.from_type, d.to_type) != (ft, tt):
            raise validation_error(f"associationTypeId {tid} is not valid from {ft} to {tt}")
        cat = t.get("associationCategory")
        if cat is not None and cat != d.category:
            raise validation_error(
                f"associationTypeId {tid} is {d.category}, not {cat}",
            )
        out.add(tid)
    return out


def _labels_pair(
    store: PortalStore, ft: str, fid: int, tt: str, tid: int, type_ids: set[int]
) -> dict[str, Any]:
    defs = store.types.assoc_defs
    types = store.types.types
    return {
        "fromObjectTypeId": types[ft].type_id,
        "fromObjectId": str(fid),
        "toObjectTypeId": types[tt].type_id,
        "toObjectId": str(tid),
        "labels": sorted(str(defs[t].label) for t in type_ids if defs[t].label),
    }


def _batch(call: Call, results: list[Any], errors: list[dict[str, Any]], ok: int) -> tuple[int, Any]:
    now = ms_to_iso(call.state.clock.now_ms())
    body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now}
    if errors:
        body["numErrors"] = len(errors)
        body["errors"] = errors
        return 207, body
    return ok, body


def _error(category: str, message: str, ids: list[str]) -> dict[str, Any]:
    return {
        "status": "error",
        "category": category,
        "message": message,
        "context": {"ids": ids},
        "links": {},
        "errors": [],
    }


def _default_result(store: PortalStore, ft: str, tt: str, fid: str, tid: str) -> dict[str, Any]:
    d = store.types.assoc_defs[store.types.default_assoc[(ft, tt)]]
    return {
        "from": {"id": fid},
        "to": {"id": tid},
        "associationSpec": {"associationCategory": d.category, "associationTypeId": d.type_id},
    }


async def put_default(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    fid = _exists(call, ft, call.params["fromObjectId"])
    tid = _exists(call, tt, call.params["toObjectId"])
    store = call.portal_store
    store.associate((ft, fid), (tt, tid), None, call.source)
    result = _default_result(store, ft, tt, str(fid), str(tid))
    return _batch(call, [result], [], 200)


async def put_labelled(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    fid = _exists(call, ft, call.params["objectId"])
    tid = _exists(call, tt, call.params["toObjectId"])
    if not isinstance(call.body, list) or not call.body:
        raise validation_error("The body must be a non-empty list of association types")
    store = call.portal_store
    ids = _check_type_ids(store, ft, tt, call.body)
    types = store.associate((ft, fid), (tt, tid), ids, call.source)
    return 201, _labels_pair(store, ft, fid, tt, tid, types)


async def delete_pair(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    store = call.portal_store
    store.dissociate(
        (ft, int(call.params["objectId"])), (tt, int(call.params["toObjectId"])), None, call.source
    )
    return 204, None


async def list_for_object(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    fid = _exists(call, ft, call.params["objectId"])
    store = call.portal_store
    results = [
        {"toObjectId": str(tid), "associationTypes": [_spec(store, x) for x in sorted(types)]}
        for tid, types in store.associations_of(ft, fid, tt)
    ]
    return 200, {"results": results}


def _inputs(call: Call) -> list[dict[str, Any]]:
    body = call.body
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise validation_error("Invalid input JSON on line 1: 'inputs' is required")
    if len(body["inputs"]) > 100:
        raise validation_error(
            f"Batch input limit exceeded: {len(body['inputs'])} inputs were given; the maximum is 100."
        )
    return body["inputs"]


def _id(x: Any) -> str:
    return str((x or {}).get("id", "")) if isinstance(x, dict) else str(x)


async def batch_create(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    store = call.portal_store
    results, missing = [], []
    for i in _inputs(call):
        fid, tid = _id(i.get("from")), _id(i.get("to"))
        ids = _check_type_ids(store, ft, tt, i.get("types") or [])
        if store.get(ft, fid) is None or store.get(tt, tid) is None:
            missing.append(fid if store.get(ft, fid) is None else tid)
            continue
        types = store.associate((ft, int(fid)), (tt, int(tid)), ids, call.source)
        results.append(_labels_pair(store, ft, int(fid), tt, int(tid), types))
    errors = [_error("OBJECT_NOT_FOUND", "Some objects do not exist", missing)] if missing else []
    return _batch(call, results, errors, 201)


async def batch_default(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    store = call.portal_store
    results, missing = [], []
    for i in _inputs(call):
        fid, tid = _id(i.get("from")), _id(i.get("to"))
        if store.get(ft, fid) is None or store.get(tt, tid) is None:
            missing.append(fid if store.get(ft, fid) is None else tid)
            continue
        store.associate((ft, int(fid)), (tt, int(tid)), None, call.source)
        results.append(_default_result(store, ft, tt, fid, tid))
    errors = [_error("OBJECT_NOT_FOUND", "Some objects do not exist", missing)] if missing else []
    return _batch(call, results, errors, 200)


async def batch_read(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    store = call.portal_store
    results, errors = [], []
    for i in _inputs(call):
        fid = _id(i)
        assocs = store.associations_of(ft, int(fid), tt) if fid.isdigit() else []
        if not assocs:
            errors.append(
                _error(
                    "NO_ASSOCIATIONS_FOUND",
                    f"No {tt} is associated with {store.type_def(ft).singular} {fid}.",
                    [fid],
                )
            )
            continue
        results.append(
            {
                "from": {"id": fid},
                "to": [
                    {"toObjectId": str(t), "associationTypes": [_spec(store, x) for x in sorted(types)]}
                    for t, types in assocs
                ],
            }
        )
    return _batch(call, results, errors, 200)


async def batch_archive(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    store = call.portal_store
    for i in _inputs(call):
        fid = _id(i.get("from"))
        for to in i.get("to") or []:
            tid = _id(to)
            if fid.isdigit() and tid.isdigit():
                store.dissociate((ft, int(fid)), (tt, int(tid)), None, call.source)
    return 204, None


async def batch_labels_archive(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    store = call.portal_store
    for i in _inputs(call):
        fid, tid = _id(i.get("from")), _id(i.get("to"))
        ids = _check_type_ids(store, ft, tt, i.get("types") or [])
        if fid.isdigit() and tid.isdigit():
            store.dissociate((ft, int(fid)), (tt, int(tid)), ids, call.source)
    return 204, None


# ---- labels (association definitions) -----------------------------------------------------------


def _label_types(call: Call) -> tuple[str, str]:
    ft, tt = call.object_type("fromObjectType"), call.object_type("toObjectType")
    if not call.portal_store.types.can_associate(ft, tt):
        raise validation_error(f"{ft} can't be associated with {tt}")
    return ft, tt


def _label_spec(store: PortalStore, d: AssociationDef) -> dict[str, Any]:
    types = store.types.types
    out: dict[str, Any] = {
        "category": d.category,
        "typeId": d.type_id,
        "fromObjectTypeId": types[d.from_type].type_id,
        "toObjectTypeId": types[d.to_type].type_id,
    }
    if d.label is not None:
        out["label"] = d.label
    return out


async def list_labels(call: Call) -> tuple[int, Any]:
    ft, tt = _label_types(call)
    store = call.portal_store
    return 200, {"results": [_label_spec(store, d) for d in store.types.defs_for(ft, tt)]}


async def create_label(call: Call) -> tuple[int, Any]:
    ft, tt = _label_types(call)
    store = call.portal_store
    body = call.body if isinstance(call.body, dict) else {}
    label, name = body.get("label"), body.get("name")
    inverse = body.get("inverseLabel")
    if not isinstance(label, str) or not label or not isinstance(name, str) or not name:
        raise validation_error("label and name are required")
    if inverse is not None and not isinstance(inverse, str):
        raise validation_error("inverseLabel must be a string")
    if any(
        d.name == name or d.label == label
        for d in store.types.defs_for(ft, tt)
        if d.category == "USER_DEFINED"
    ):
        raise ApiError(409, error_body(f"An association label {label!r} already exists", "CONFLICT"))
    fwd, rev = store.types.new_assoc_id(), store.types.new_assoc_id()
    d1, d2 = store.types.define_pair(
        ft, tt, fwd, rev, "USER_DEFINED", label, inverse or label, default=False, name=name
    )
    # A label without an inverse names both directions of the pair alike.
    return 200, {"results": [_label_spec(store, d1), _label_spec(store, d2)]}


def _user_def(store: PortalStore, ft: str, tt: str, raw: Any) -> AssociationDef:
    try:
        tid = int(raw)
    except (TypeError, ValueError):
        raise validation_error(f"associationTypeId must be a number, got {raw!r}") from None
    d = store.types.assoc_defs.get(tid)
    if d is None or (d.from_type, d.to_type) != (ft, tt):
        raise ApiError(404, error_body(f"No association type {tid} from {ft} to {tt}", "OBJECT_NOT_FOUND"))
    if d.category != "USER_DEFINED":
        raise validation_error(f"association type {tid} is HUBSPOT_DEFINED and can't be changed")
    return d


async def update_label(call: Call) -> tuple[int, Any]:
    ft, tt = _label_types(call)
    store = call.portal_store
    body = call.body if isinstance(call.body, dict) else {}
    d = _user_def(store, ft, tt, body.get("associationTypeId"))
    if not isinstance(body.get("label"), str) or not body["label"]:
        raise validation_error("label is required")
    d.label = body["label"]
    if isinstance(body.get("inverseLabel"), str):
        store.types.assoc_defs[d.inverse_id].label = body["inverseLabel"]
    return 204, None


async def delete_label(call: Call) -> tuple[int, Any]:
    ft, tt = _label_types(call)
    store = call.portal_store
    d = _user_def(store, ft, tt, call.params["associationTypeId"])
    # Associations with the label lose it (and the inverse); the pair's other types stay.
    for (a, aid), targets in list(store.assocs.items()):
        for (b, bid), types in list(targets.items()):
            if d.type_id in types or d.inverse_id in types:
                store.dissociate(
                    (a, aid), (b, bid), {d.type_id, d.inverse_id} & types, call.source, emit=False
                )
    del store.types.assoc_defs[d.type_id]
    store.types.assoc_defs.pop(d.inverse_id, None)
    return 204, None


def routes(state: SandboxState) -> list[Route]:
    obj = "/crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}"
    batch = "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch"
    labels = "/crm/v4/associations/{fromObjectType}/{toObjectType}/labels"
    return [
        api_route(
            state,
            "PUT",
            "/crm/v4/objects/{fromObjectType}/{fromObjectId}/associations/default/{toObjectType}/{toObjectId}",
            put_default,
            scope="write",
        ),
        api_route(state, "GET", obj, list_for_object, scope="read"),
        api_route(state, "PUT", obj + "/{toObjectId}", put_labelled, scope="write"),
        api_route(state, "DELETE", obj + "/{toObjectId}", delete_pair, scope="write"),
        api_route(state, "POST", batch + "/create", batch_create, scope="write"),
        api_route(state, "POST", batch + "/associate/default", batch_default, scope="write"),
        api_route(state, "POST", batch + "/read", batch_read, scope="read"),
        api_route(state, "POST", batch + "/archive", batch_archive, scope="write"),
        api_route(state, "POST", batch + "/labels/archive", batch_labels_archive, scope="write"),
    ] + [
        route
        # The labels API is documented under both prefixes.
        for base in (labels, "/crm/associations/v4/{fromObjectType}/{toObjectType}/labels")
        for route in (
            api_route(state, "GET", base, list_labels, scope="read"),
            api_route(state, "POST", base, create_label, scope="schema.write"),
            api_route(state, "PUT", base, update_label, scope="schema.write"),
            api_route(state, "DELETE", base + "/{associationTypeId}", delete_label, scope="schema.write"),
        )
    ]
