"""Associations v4: default associations, labelled (typed) ones, batch create/read/archive."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from .errors import ApiError, error_body, validation_error
from .properties import OBJECT_TYPE_IDS, SINGULAR, UPPER
from .routing import Call, api_route
from .search import ms_to_iso
from .state import SandboxState
from .store import ASSOCIATION_TYPES, PRIMARY_TYPES

# type id → (from type, to type); only HubSpot-defined types exist in the sandbox.
TYPE_BY_ID: dict[int, tuple[str, str]] = {}
for _pair, (_default, _) in ASSOCIATION_TYPES.items():
    TYPE_BY_ID[_default] = _pair
for _pair, (_prim, _) in PRIMARY_TYPES.items():
    TYPE_BY_ID[_prim] = _pair
PRIMARY_IDS = {p for p, _ in PRIMARY_TYPES.values()}


def v3_type_name(ft: str, tt: str, type_id: int) -> str:
    """CRM v3's name of an association type: ``contact_to_company`` (primary) or ``…_unlabeled``."""
    base = f"{SINGULAR[ft]}_to_{SINGULAR[tt]}"
    if type_id in PRIMARY_IDS:
        return base
    return base + "_unlabeled" if (ft, tt) in PRIMARY_TYPES else base


def _spec(type_id: int) -> dict[str, Any]:
    return {
        "category": "HUBSPOT_DEFINED",
        "typeId": type_id,
        "label": "Primary" if type_id in PRIMARY_IDS else None,
    }


def _types(call: Call) -> tuple[str, str]:
    keys = (
        ("fromObjectType", "toObjectType")
        if "fromObjectType" in call.params
        else ("objectType", "toObjectType")
    )
    ft, tt = call.object_type(keys[0]), call.object_type(keys[1])
    if (ft, tt) not in ASSOCIATION_TYPES:
        raise validation_error(f"{ft} can't be associated with {tt}")
    return ft, tt


def _exists(call: Call, t: str, oid: Any) -> int:
    key = str(oid)
    if call.portal_store.get(t, key) is None:
        raise ApiError(
            404 if call.batch_size is None else 400,
            error_body(f"{UPPER[t].title()} {key} does not exist", "OBJECT_NOT_FOUND", context={"id": [key]}),
        )
    return int(key)


def _check_type_ids(ft: str, tt: str, types: list[dict[str, Any]]) -> set[int]:
    out = set()
    for t in types:
        try:
            tid = int(t["associationTypeId"])
        except (KeyError, TypeError, ValueError):
            raise validation_error("every type needs an associationTypeId") from None
        if TYPE_BY_ID.get(tid) != (ft, tt):
            raise validation_error(f"associationTypeId {tid} is not valid from {ft} to {tt}")
        out.add(tid)
    return out


def _labels_pair(ft: str, fid: int, tt: str, tid: int, type_ids: set[int]) -> dict[str, Any]:
    return {
        "fromObjectTypeId": OBJECT_TYPE_IDS[ft],
        "fromObjectId": fid,
        "toObjectTypeId": OBJECT_TYPE_IDS[tt],
        "toObjectId": tid,
        "labels": ["Primary"] if type_ids & PRIMARY_IDS else [],
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


async def put_default(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    fid = _exists(call, ft, call.params["fromObjectId"])
    tid = _exists(call, tt, call.params["toObjectId"])
    call.portal_store.associate(ft, fid, tt, tid, None, call.source)
    default = ASSOCIATION_TYPES[(ft, tt)][0]
    result = {
        "from": {"id": str(fid)},
        "to": {"id": str(tid)},
        "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": default},
    }
    return _batch(call, [result], [], 200)


async def put_labelled(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    fid = _exists(call, ft, call.params["objectId"])
    tid = _exists(call, tt, call.params["toObjectId"])
    if not isinstance(call.body, list) or not call.body:
        raise validation_error("The body must be a non-empty list of association types")
    ids = _check_type_ids(ft, tt, call.body)
    types = call.portal_store.associate(ft, fid, tt, tid, ids, call.source)
    return 200, _labels_pair(ft, fid, tt, tid, types)


async def delete_pair(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    store = call.portal_store
    store.dissociate(ft, int(call.params["objectId"]), tt, int(call.params["toObjectId"]), None, call.source)
    return 204, None


async def list_for_object(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    fid = _exists(call, ft, call.params["objectId"])
    results = [
        {"toObjectId": tid, "associationTypes": [_spec(x) for x in sorted(types)]}
        for tid, types in call.portal_store.associations_of(ft, fid, tt)
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
        ids = _check_type_ids(ft, tt, i.get("types") or [])
        if store.get(ft, fid) is None or store.get(tt, tid) is None:
            missing.append(fid if store.get(ft, fid) is None else tid)
            continue
        types = store.associate(ft, int(fid), tt, int(tid), ids, call.source)
        results.append(_labels_pair(ft, int(fid), tt, int(tid), types))
    errors = [_error("OBJECT_NOT_FOUND", "Some objects do not exist", missing)] if missing else []
    return _batch(call, results, errors, 201)


async def batch_default(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    store = call.portal_store
    default = ASSOCIATION_TYPES[(ft, tt)][0]
    results, missing = [], []
    for i in _inputs(call):
        fid, tid = _id(i.get("from")), _id(i.get("to"))
        if store.get(ft, fid) is None or store.get(tt, tid) is None:
            missing.append(fid if store.get(ft, fid) is None else tid)
            continue
        store.associate(ft, int(fid), tt, int(tid), None, call.source)
        results.append(
            {
                "from": {"id": fid},
                "to": {"id": tid},
                "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": default},
            }
        )
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
                    f"No {tt} is associated with {ft[:-1] if ft != 'companies' else 'company'} {fid}.",
                    [fid],
                )
            )
            continue
        results.append(
            {
                "from": {"id": fid},
                "to": [
                    {"toObjectId": t, "associationTypes": [_spec(x) for x in sorted(types)]}
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
                store.dissociate(ft, int(fid), tt, int(tid), None, call.source)
    return 204, None


async def batch_labels_archive(call: Call) -> tuple[int, Any]:
    ft, tt = _types(call)
    store = call.portal_store
    for i in _inputs(call):
        fid, tid = _id(i.get("from")), _id(i.get("to"))
        ids = _check_type_ids(ft, tt, i.get("types") or [])
        if fid.isdigit() and tid.isdigit():
            store.dissociate(ft, int(fid), tt, int(tid), ids, call.source)
    return 204, None


def routes(state: SandboxState) -> list[Route]:
    obj = "/crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}"
    batch = "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch"
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
    ]
