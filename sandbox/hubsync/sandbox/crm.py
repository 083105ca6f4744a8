"""CRM v3 objects: CRUD, list paging, batch calls, search, merge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.routing import Route

from .errors import ApiError, error_body, validation_error
from .routing import Call, api_route
from .search import MAX_BODY_CHARS, SearchError, ms_to_iso
from .state import SandboxState
from .store import CrmObject, PortalStore

MAX_BATCH = 100
MAX_PAGE = 100


def _bool(v: str | None) -> bool:
    return v is not None and v.lower() == "true"


def _props_param(call: Call) -> list[str] | None:
    raw = call.request.query_params.getlist("properties")
    names = [n.strip() for part in raw for n in part.split(",") if n.strip()]
    return names or None


def _not_found(object_id: str) -> ApiError:
    return ApiError(
        404,
        error_body(
            "Object not found.  objectId are usually numeric.",
            "OBJECT_NOT_FOUND",
            context={"id": [object_id]},
        ),
    )


def _now_iso(call: Call) -> str:
    return ms_to_iso(call.state.clock.now_ms())


def _inputs(call: Call) -> list[dict[str, Any]]:
    body = call.body
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise validation_error("Invalid input JSON on line 1: 'inputs' is required")
    inputs = body["inputs"]
    if len(inputs) > MAX_BATCH:
        raise validation_error(
            f"Batch input limit exceeded: {len(inputs)} inputs were given; the maximum is {MAX_BATCH}.",
            errors=[{"message": f"inputs size must be between 0 and {MAX_BATCH}", "code": "INVALID_SIZE"}],
        )
    for i in inputs:
        if not isinstance(i, dict):
            raise validation_error("Invalid input JSON on line 1: every input must be an object")
    traces = [i["objectWriteTraceId"] for i in inputs if isinstance(i.get("objectWriteTraceId"), str)]
    if traces:
        call.trace_ids = traces
    return inputs


def _dupes(ids: list[str]) -> None:
    seen: set[str] = set()
    dups: set[str] = set()
    for i in ids:
        (dups if i in seen else seen).add(i)
    dup = sorted(dups)
    if dup:
        raise validation_error(f"Duplicate IDs found in batch input: {dup}. IDs must be unique")


def _batch_response(
    call: Call, results: list[dict[str, Any]], errors: list[dict[str, Any]], ok_status: int, started: str
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "startedAt": started,
        "completedAt": _now_iso(call),
    }
    if errors:
        body["numErrors"] = len(errors)
        body["errors"] = errors
        return 207, body
    return ok_status, body


def _batch_error(category: str, message: str, context: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "status": "error",
        "category": category,
        "message": message,
        "context": context,
        "links": {},
        "errors": [],
    }


def _full(obj: CrmObject) -> dict[str, Any]:
    return obj.to_wire(tuple(obj.props))


def _written(obj: CrmObject, trace: str | None) -> dict[str, Any]:
    """A batch write's result: the object, with the input's objectWriteTraceId echoed back."""
    r = _full(obj)
    if trace:
        r["objectWriteTraceId"] = trace
    return r


# ---- single objects ------------------------------------------------------------------------------


async def list_objects(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    q = call.request.query_params
    try:
        limit = int(q.get("limit", "10"))
        after = int(q.get("after") or 0)
    except ValueError:
        raise validation_error("limit and after must be integers") from None
    if limit < 1 or limit > MAX_PAGE:
        raise validation_error(f"limit must be between 1 and {MAX_PAGE}")
    store = call.portal_store
    names = store.read_names(t, _props_param(call))
    objs, nxt = store.page(t, limit, after, _bool(q.get("archived")))
    results = []
    for o in objs:
        w = o.to_wire(names)
        _add_associations(call, t, o, w)
        results.append(w)
    body: dict[str, Any] = {"results": results}
    if nxt is not None:
        url = call.request.url
        link = f"{url.scheme}://{url.netloc}{url.path}?after={nxt}&limit={limit}"
        body["paging"] = {"next": {"after": str(nxt), "link": link}}
    return 200, body


async def get_object(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    q = call.request.query_params
    store = call.portal_store
    oid = call.params["objectId"]
    id_prop = q.get("idProperty")
    store.check_id_property(t, id_prop)
    obj = store.get(t, oid, id_prop)
    if obj is None and _bool(q.get("archived")):
        cand = store.objects[t].get(int(oid)) if oid.isdigit() else None
        obj = cand if cand is not None and cand.archived else None
    if obj is None:
        raise _not_found(oid)
    out = obj.to_wire(store.read_names(t, _props_param(call)))
    _add_associations(call, t, obj, out)
    return 200, out


def _add_associations(call: Call, t: str, obj: CrmObject, out: dict[str, Any]) -> None:
    """``?associations=companies,deals`` on v3 reads: ids and v3 type names per target type."""
    from .associations import v3_type_name

    raw = call.request.query_params.getlist("associations")
    store = call.portal_store
    wanted = [store.types.resolve(n.strip()) for part in raw for n in part.split(",") if n.strip()]
    assoc: dict[str, Any] = {}
    for tt in wanted:
        if tt is None or tt == t or not store.types.can_associate(t, tt):
            continue
        results = [
            {"id": str(tid), "type": v3_type_name(store, t, tt, x)}
            for tid, types in call.portal_store.associations_of(t, obj.id, tt)
            for x in sorted(types)
        ]
        if results:
            assoc[tt] = {"results": results}
    if assoc:
        out["associations"] = assoc


async def create_object(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    store = call.portal_store
    body = call.body if isinstance(call.body, dict) else {}
    props = store.normalize(t, body.get("properties"), creating=True)
    _check_associations(call, t, body.get("associations"))
    obj = store.create(t, props, call.source)
    _create_associations(call, t, obj, body.get("associations"))
    return 201, _full(obj)


async def update_object(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    store = call.portal_store
    oid = call.params["objectId"]
    id_prop = call.request.query_params.get("idProperty")
    store.check_id_property(t, id_prop)
    obj = store.get(t, oid, id_prop)
    if obj is None:
        raise _not_found(oid)
    body = call.body if isinstance(call.body, dict) else {}
    props = store.normalize(t, body.get("properties"), existing=obj)
    store.update(t, obj, props, call.source)
    return 200, _full(obj)


async def archive_object(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    store = call.portal_store
    obj = store.get(t, call.params["objectId"])
    if obj is not None:
        store.archive(t, obj, call.source)
    return 204, None


async def gdpr_delete(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    if t != "contacts":
        raise validation_error("GDPR delete exists for contacts only")
    store = call.portal_store
    body = call.body if isinstance(call.body, dict) else {}
    id_prop = body.get("idProperty")
    store.check_id_property(t, id_prop)
    obj = store.get(t, str(body.get("objectId", "")), id_prop)
    if obj is None:
        raise _not_found(str(body.get("objectId", "")))
    store.purge(t, obj, call.source)
    return 204, None


async def merge_objects(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    store = call.portal_store
    body = call.body if isinstance(call.body, dict) else {}
    p, o = str(body.get("primaryObjectId", "")), str(body.get("objectIdToMerge", ""))
    primary, other = store.get(t, p), store.get(t, o)
    if primary is None or other is None or primary is other:
        raise validation_error(f"Can't merge {p} and {o}: both must exist and differ")
    store.merge(t, primary, other, call.source)
    return 200, _full(primary)


def _parse_associations(call: Call, t: str, assocs: Any) -> list[tuple[str, int, set[int]]]:
    """``associations`` on create: ``[{to:{id}, types:[{associationCategory, associationTypeId}]}]``."""
    if not assocs:
        return []
    if not isinstance(assocs, list):
        raise validation_error("associations must be a list")
    store = call.portal_store
    defs = store.types.assoc_defs
    out = []
    for a in assocs:
        to_id = str((a.get("to") or {}).get("id", ""))
        types = {int(x["associationTypeId"]) for x in a.get("types") or []}
        to_types = {defs[x].to_type for x in types if x in defs and defs[x].from_type == t}
        if len(to_types) != 1 or len(types) == 0 or any(x not in defs for x in types):
            raise validation_error(f"Invalid association to {to_id} with types {sorted(types)}")
        to_type = to_types.pop()
        if store.get(to_type, to_id) is None:
            raise validation_error(f"Invalid association: {to_type} {to_id} does not exist")
        out.append((to_type, int(to_id), types))
    return out


def _check_associations(call: Call, t: str, assocs: Any) -> None:
    _parse_associations(call, t, assocs)


def _create_associations(call: Call, t: str, obj: CrmObject, assocs: Any) -> None:
    store = call.portal_store
    for to_type, to_id, types in _parse_associations(call, t, assocs):
        store.associate((t, obj.id), (to_type, to_id), types, call.source)


# ---- batches --------------------------------------------------------------------------------------


async def batch_read(call: Call) -> tuple[int, Any]:
    started = _now_iso(call)
    t = call.object_type()
    store = call.portal_store
    inputs = _inputs(call)
    body = call.body
    id_prop = body.get("idProperty")
    store.check_id_property(t, id_prop)
    names = store.read_names(t, body.get("properties"))
    archived = _bool(call.request.query_params.get("archived"))
    results = []
    missing: list[str] = []
    seen: set[int] = set()
    objects = store.objects[t]
    for i in inputs:
        key = str(i.get("id", ""))
        if id_prop and id_prop not in ("hs_object_id", "id"):
            obj = store.get(t, key, id_prop)
        elif archived:
            obj = objects.get(int(key)) if key.isdigit() else None
            if obj is not None and not obj.archived:
                obj = None
        else:
            obj = objects.get(int(key)) if key.isdigit() else None
            if obj is not None and obj.archived:
                obj = store.get(t, key)  # a merged-away id reads as the record it went into
        if obj is None:
            missing.append(key)
        elif obj.id not in seen:
            seen.add(obj.id)
            results.append(obj.to_wire(names))
    errors = []
    if missing:
        errors.append(
            _batch_error(
                "OBJECT_NOT_FOUND",
                f"Could not get some {store.type_def(t).upper} objects, they may be deleted or not exist. "
                "Check that ids are valid.",
                {"ids": missing},
            )
        )
    return _batch_response(call, results, errors, 200, started)


def _conflict_check(
    store: PortalStore, t: str, items: Sequence[tuple[int | None, dict[str, str], str | None]]
) -> list[tuple[int, ApiError]]:
    """Unique-value conflicts of a batch: against stored objects and among the inputs."""
    out: list[tuple[int, ApiError]] = []
    claimed: dict[tuple[str, str], int] = {}
    for n, (self_id, props, _trace) in enumerate(items):
        err = store.unique_conflict(t, props, self_id)
        if err is None:
            for name in store.unique[t]:
                v = props.get(name)
                if not v:
                    continue
                if (name, v) in claimed:
                    err = validation_error(
                        f"Duplicate unique value {v!r} for property {name!r} in batch inputs "
                        f"{claimed[(name, v)]} and {n}"
                    )
                    break
                claimed[(name, v)] = n
        if err is not None:
            out.append((n, err))
    return out


def _conflicts_to_errors(
    call: Call, conflicts: list[tuple[int, ApiError]], traces: list[str | None]
) -> tuple[set[int], list[dict[str, Any]]]:
    if conflicts and call.state.config.batch_create_conflict == "reject_batch":
        raise conflicts[0][1]
    bad = {n for n, _ in conflicts}
    errors = []
    for n, err in conflicts:
        ctx: dict[str, list[str]] = {}
        if traces[n]:
            ctx["objectWriteTraceId"] = [str(traces[n])]
        errors.append(_batch_error(err.body["category"], err.body["message"], ctx))
    return bad, errors


async def batch_create(call: Call) -> tuple[int, Any]:
    started = _now_iso(call)
    t = call.object_type()
    store = call.portal_store
    inputs = _inputs(call)
    items = [
        (None, store.normalize(t, i.get("properties"), creating=True), i.get("objectWriteTraceId"))
        for i in inputs
    ]
    for i in inputs:
        _check_associations(call, t, i.get("associations"))
    traces = [tr for _, _, tr in items]
    bad, errors = _conflicts_to_errors(call, _conflict_check(store, t, items), traces)
    results = []
    for n, (_, props, trace) in enumerate(items):
        if n in bad:
            continue
        obj = store.create(t, props, call.source, trace)
        _create_associations(call, t, obj, inputs[n].get("associations"))
        results.append(_written(obj, trace))
    return _batch_response(call, results, errors, 201, started)


async def batch_update(call: Call) -> tuple[int, Any]:
    started = _now_iso(call)
    t = call.object_type()
    store = call.portal_store
    inputs = _inputs(call)
    _dupes([str(i.get("id", "")) for i in inputs])
    targets: list[CrmObject | None] = []
    for i in inputs:
        id_prop = i.get("idProperty")
        store.check_id_property(t, id_prop)
        targets.append(store.get(t, str(i.get("id", "")), id_prop))
    items = [
        (
            o.id if o else None,
            store.normalize(t, i.get("properties"), existing=o),
            i.get("objectWriteTraceId"),
        )
        for o, i in zip(targets, inputs, strict=True)
    ]
    live = [(n, it) for n, it in enumerate(items) if targets[n] is not None]
    conflicts = [(live[k][0], e) for k, e in _conflict_check(store, t, [it for _, it in live])]
    bad, errors = _conflicts_to_errors(call, conflicts, [tr for _, _, tr in items])
    results = []
    missing = []
    for n, (obj, (_, props, trace)) in enumerate(zip(targets, items, strict=True)):
        if obj is None:
            missing.append(str(inputs[n].get("id", "")))
            continue
        if n in bad:
            continue
        store.update(t, obj, props, call.source, trace)
        results.append(_written(obj, trace))
    if missing:
        errors.append(
            _batch_error(
                "OBJECT_NOT_FOUND",
                f"Could not update some {store.type_def(t).upper} objects, they may be deleted or not exist. "
                "Check that ids are valid.",
                {"ids": missing},
            )
        )
    return _batch_response(call, results, errors, 200, started)


async def batch_upsert(call: Call) -> tuple[int, Any]:
    started = _now_iso(call)
    t = call.object_type()
    store = call.portal_store
    inputs = _inputs(call)
    keys = []
    for i in inputs:
        id_prop = i.get("idProperty")
        if not id_prop:
            raise validation_error("idProperty is required for batch upsert")
        store.check_id_property(t, id_prop)
        if id_prop in ("hs_object_id", "id"):
            raise validation_error("Upsert by hs_object_id is not supported; use a unique-value property")
        keys.append((id_prop, str(i.get("id", ""))))
    _dupes([f"{p}:{v.lower() if p == 'email' else v}" for p, v in keys])
    items = []
    targets = []
    for (id_prop, key), i in zip(keys, inputs, strict=True):
        obj = store.get(t, key, id_prop)
        raw = (
            dict(i.get("properties") or {}) if isinstance(i.get("properties"), dict) else i.get("properties")
        )
        if isinstance(raw, dict):
            raw[id_prop] = key
        props = store.normalize(t, raw, existing=obj, creating=obj is None)
        targets.append(obj)
        items.append((obj.id if obj else None, props, i.get("objectWriteTraceId")))
    bad, errors = _conflicts_to_errors(call, _conflict_check(store, t, items), [tr for _, _, tr in items])
    results = []
    source = call.source
    for n, (obj, (_, props, trace)) in enumerate(zip(targets, items, strict=True)):
        if n in bad:
            continue
        if obj is None:
            obj = store.create(t, props, source, trace)
            new = True
        else:
            store.update(t, obj, props, source, trace)
            new = False
        results.append({**_written(obj, trace), "new": new})
    return _batch_response(call, results, errors, 200, started)


async def batch_archive(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    store = call.portal_store
    for i in _inputs(call):
        obj = store.get(t, str(i.get("id", "")))
        if obj is not None:
            store.archive(t, obj, call.source)
    return 204, None


# ---- search ---------------------------------------------------------------------------------------


async def search_objects(call: Call) -> tuple[int, Any]:
    t = call.object_type()
    raw = await call.request.body()
    if len(raw.decode("utf-8", "replace")) > MAX_BODY_CHARS:
        raise validation_error(
            f"Request body is {len(raw)} characters long; the maximum for search is {MAX_BODY_CHARS}."
        )
    body = call.body if isinstance(call.body, dict) else {}
    store = call.portal_store
    try:
        page, total, nxt = store.search(t, body)
    except SearchError as exc:
        raise validation_error(str(exc)) from None
    names = store.read_names(t, body.get("properties"))
    results = []
    for oid, view in page:
        obj = store.objects[t][oid]
        results.append(
            {
                "id": obj.id_str,
                "properties": {n: view.get(n) for n in names},
                "createdAt": obj.created_iso,
                "updatedAt": view.get("hs_lastmodifieddate") or obj.updated_iso,
                "archived": False,
            }
        )
    out: dict[str, Any] = {"total": total, "results": results}
    if nxt >= 0:
        out["paging"] = {"next": {"after": str(nxt)}}
    return 200, out


def routes(state: SandboxState) -> list[Route]:
    base = "/crm/v3/objects/{objectType}"
    r = [
        api_route(state, "POST", base + "/batch/read", batch_read, scope="read"),
        api_route(state, "POST", base + "/batch/create", batch_create, scope="write"),
        api_route(state, "POST", base + "/batch/update", batch_update, scope="write"),
        api_route(state, "POST", base + "/batch/upsert", batch_upsert, scope="write"),
        api_route(state, "POST", base + "/batch/archive", batch_archive, scope="write"),
        api_route(state, "POST", base + "/search", search_objects, kind="search", scope="read"),
        api_route(state, "POST", base + "/merge", merge_objects, scope="write"),
        api_route(state, "POST", base + "/gdpr-delete", gdpr_delete, scope="write"),
        api_route(state, "GET", base, list_objects, scope="read"),
        api_route(state, "POST", base, create_object, scope="write"),
        api_route(state, "GET", base + "/{objectId}", get_object, scope="read"),
        api_route(state, "PATCH", base + "/{objectId}", update_object, scope="write"),
        api_route(state, "DELETE", base + "/{objectId}", archive_object, scope="write"),
    ]
    return r
