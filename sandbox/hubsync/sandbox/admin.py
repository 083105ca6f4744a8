"""The inspection and control API under ``/_sandbox/`` (JSON, no auth, never rate limited)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .config import FaultRule, WebhookSubscriptionConfig
from .errors import ApiError, error_body, validation_error
from .routing import json_response, read_json
from .state import SandboxState
from .store import PortalStore


def _portal(state: SandboxState, request: Request) -> PortalStore:
    raw = request.query_params.get("portal") or request.query_params.get("hub_id")
    hub_id = int(raw) if raw else next(iter(state.stores))
    store = state.stores.get(hub_id)
    if store is None:
        raise ApiError(404, error_body(f"No portal {hub_id}", "OBJECT_NOT_FOUND"))
    return store


def _type(store: PortalStore, raw: str) -> str:
    t = store.types.resolve(raw)
    if t is None:
        raise validation_error(f"Unknown object type {raw}")
    return t


def routes(state: SandboxState) -> list[Route]:
    def r(method: str, path: str, fn: Callable[[Request], Awaitable[Any]], status: int = 200) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                return json_response(status, await fn(request))
            except ApiError as err:
                return json_response(err.status, err.body, err.headers)
            except ValidationError as exc:
                return json_response(400, error_body(str(exc), "VALIDATION_ERROR"))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                return json_response(400, error_body(f"{type(exc).__name__}: {exc}", "VALIDATION_ERROR"))

        return Route("/_sandbox" + path, endpoint, methods=[method])

    async def health(request: Request) -> Any:
        return {"status": "ok", "portals": sorted(state.stores)}

    async def config(request: Request) -> Any:
        return orjson.loads(state.config.model_dump_json())

    async def requests(request: Request) -> Any:
        q = request.query_params
        limit = int(q["limit"]) if "limit" in q else None
        return state.requests.to_wire(limit=limit, since=int(q.get("since", 0)))

    async def clear_requests(request: Request) -> Any:
        state.requests.clear()
        return {"cleared": True}

    async def objects(request: Request) -> Any:
        store = _portal(state, request)
        t = _type(store, request.path_params["objectType"])
        return {
            "portalId": store.hub_id,
            "objectType": t,
            "results": [_dump(store, t, o) for o in store.objects[t].values()],
        }

    async def one_object(request: Request) -> Any:
        store = _portal(state, request)
        t = _type(store, request.path_params["objectType"])
        obj = store.objects[t].get(int(request.path_params["objectId"]))
        if obj is None:
            raise ApiError(404, error_body("no such object", "OBJECT_NOT_FOUND"))
        return _dump(store, t, obj)

    async def reset(request: Request) -> Any:
        await state.reset()
        return {"reset": True}

    async def get_faults(request: Request) -> Any:
        return {"results": [f.model_dump() for f in state.faults]}

    async def add_fault(request: Request) -> Any:
        body = await read_json(request)
        rules = body if isinstance(body, list) else [body]
        added = [state.add_fault(FaultRule.model_validate(x)) for x in rules]
        return {"results": [f.model_dump() for f in added]}

    async def clear_faults(request: Request) -> Any:
        fid = request.path_params.get("faultId")
        before = len(state.faults)
        state.faults = [f for f in state.faults if fid is not None and f.id != fid]
        return {"removed": before - len(state.faults)}

    async def revoke(request: Request) -> Any:
        body = await read_json(request) or {}
        removed = []
        if body.get("token") and state.tokens.pop(body["token"], None) is not None:
            removed.append("token")
        if body.get("refresh_token"):
            rt = state.refresh_tokens.get(body["refresh_token"])
            if rt is not None:
                state.revoke_refresh_token(rt)
                removed.append("refresh_token")
        if not removed:
            raise ApiError(404, error_body("no such token", "OBJECT_NOT_FOUND"))
        return {"revoked": removed}

    async def expire(request: Request) -> Any:
        body = await read_json(request) or {}
        tok = state.tokens.get(body.get("token", ""))
        if tok is None or tok.kind != "oauth":
            raise ApiError(404, error_body("no such OAuth access token", "OBJECT_NOT_FOUND"))
        tok.expires_at = state.clock.now_ms() - 1
        return {"expired": True}

    async def tokens(request: Request) -> Any:
        now = state.clock.now_ms()
        return {
            "accessTokens": [
                {
                    "token": t.token,
                    "kind": t.kind,
                    "hubId": t.hub_id,
                    "appId": t.app_id,
                    "expiresIn": None if t.expires_at is None else (t.expires_at - now) // 1000,
                }
                for t in state.tokens.values()
            ],
            "refreshTokens": [
                {"token": r.token, "hubId": r.hub_id, "appId": r.app_id, "revoked": r.revoked}
                for r in state.refresh_tokens.values()
            ],
        }

    async def clock(request: Request) -> Any:
        body = await read_json(request) or {}
        if body.get("freeze") is True:
            state.clock.freeze()
        elif body.get("freeze") is False:
            state.clock.unfreeze()
        state.clock.advance(float(body.get("advance_s", 0)))
        return {
            "offsetMs": state.clock.offset_ms,
            "nowMs": state.clock.now_ms(),
            "frozen": state.clock.frozen_at is not None,
        }

    async def ui_edit(request: Request) -> Any:
        store = _portal(state, request)
        t = _type(store, request.path_params["objectType"])
        body = await read_json(request) or {}
        obj = store.get(t, request.path_params["objectId"])
        if obj is None:
            raise ApiError(404, error_body("no such object", "OBJECT_NOT_FOUND"))
        store.update(t, obj, store.normalize(t, body.get("properties"), existing=obj), state.ui_source())
        return _dump(store, t, obj)

    async def ui_create(request: Request) -> Any:
        store = _portal(state, request)
        t = _type(store, request.path_params["objectType"])
        body = await read_json(request) or {}
        obj = store.create(t, store.normalize(t, body.get("properties"), creating=True), state.ui_source())
        return _dump(store, t, obj)

    async def ui_churn(request: Request) -> Any:
        """Load for benchmarks: UI edits at a steady rate, made inside the sandbox (no HTTP request
        per edit). Body: ``{"ids": [...], "property": "firstname", "rate": 500, "seconds": 20}``;
        edit n sets ``property`` to ``"churn-<n>"`` on ``ids[n % len(ids)]``. Answers when done."""
        store = _portal(state, request)
        t = _type(store, request.path_params["objectType"])
        body = await read_json(request) or {}
        try:
            ids = [str(i) for i in body["ids"]]
            prop = str(body.get("property", "firstname"))
            rate = float(body.get("rate", 100))
            seconds = float(body.get("seconds", 10))
        except (KeyError, TypeError, ValueError) as exc:
            raise validation_error(f"churn needs ids (a list), and numeric rate and seconds: {exc}") from exc
        objs = [store.get(t, i) for i in ids]
        if not objs or any(o is None for o in objs) or rate <= 0 or seconds <= 0:
            raise validation_error("every id must exist; rate and seconds must be positive")
        total = int(rate * seconds)
        start = time.perf_counter()
        made = 0
        while made < total:
            due = min(int((time.perf_counter() - start) * rate) + 1, total)
            while made < due:
                obj = objs[made % len(objs)]
                assert obj is not None
                store.update(t, obj, {prop: f"churn-{made}"}, state.ui_source())
                made += 1
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - start
        return {"made": made, "elapsedSeconds": round(elapsed, 3), "ratePerSecond": round(made / elapsed, 1)}

    async def ui_churn_portals(request: Request) -> Any:
        """Load over many portals for benchmarks: UI edits at a steady total rate, made inside the
        sandbox. Body: ``{"edits": [[portal, id], ...], "property": "firstname", "rate": 500}``;
        edit n sets ``property`` to ``"churn-<n>"`` on that portal's object ``id``, in list order
        (the caller draws the portals, e.g. Zipf-distributed). Answers when done."""
        body = await read_json(request) or {}
        try:
            edits = [(int(p), str(i)) for p, i in body["edits"]]
            prop = str(body.get("property", "firstname"))
            rate = float(body.get("rate", 100))
        except (KeyError, TypeError, ValueError) as exc:
            raise validation_error(
                f"churn needs edits ([portal, id] pairs) and a numeric rate: {exc}"
            ) from exc
        t = "contacts"
        targets = []
        for portal, oid in edits:
            store = state.stores.get(portal)
            if store is None:
                raise validation_error(f"no portal {portal}")
            t = _type(store, request.path_params["objectType"])
            obj = store.get(t, oid)
            if obj is None:
                raise validation_error(f"no object {oid} in portal {portal}")
            targets.append((store, obj))
        if not targets or rate <= 0:
            raise validation_error("edits must not be empty; rate must be positive")
        start = time.perf_counter()
        made = 0
        while made < len(targets):
            due = min(int((time.perf_counter() - start) * rate) + 1, len(targets))
            while made < due:
                store, obj = targets[made]
                store.update(t, obj, {prop: f"churn-{made}"}, state.ui_source())
                made += 1
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - start
        return {"made": made, "elapsedSeconds": round(elapsed, 3), "ratePerSecond": round(made / elapsed, 1)}

    async def ui_delete(request: Request) -> Any:
        store = _portal(state, request)
        t = _type(store, request.path_params["objectType"])
        obj = store.get(t, request.path_params["objectId"])
        if obj is None:
            raise ApiError(404, error_body("no such object", "OBJECT_NOT_FOUND"))
        store.archive(t, obj, state.ui_source())
        return {"archived": True}

    async def ui_restore(request: Request) -> Any:
        store = _portal(state, request)
        t = _type(store, request.path_params["objectType"])
        obj = store.restore(t, int(request.path_params["objectId"]), state.ui_source())
        return _dump(store, t, obj)

    async def ui_merge(request: Request) -> Any:
        store = _portal(state, request)
        t = _type(store, request.path_params["objectType"])
        body = await read_json(request) or {}
        primary = store.get(t, str(body.get("primaryObjectId")))
        other = store.get(t, str(body.get("objectIdToMerge")))
        if primary is None or other is None or primary is other:
            raise validation_error("both objects must exist and differ")
        return _dump(store, t, store.merge(t, primary, other, state.ui_source()))

    async def ui_associate(request: Request) -> Any:
        store = _portal(state, request)
        body = await read_json(request) or {}
        ft, tt = _type(store, body["fromObjectType"]), _type(store, body["toObjectType"])
        fid, tid = int(body["fromObjectId"]), int(body["toObjectId"])
        if not store.types.can_associate(ft, tt):
            raise validation_error(f"{ft} can't be associated with {tt}")
        # Optional association type ids (labels); none: the pair's default type.
        types = {int(x) for x in body.get("types") or []} or None
        if body.get("remove"):
            store.dissociate((ft, fid), (tt, tid), types, state.ui_source())
        else:
            store.associate((ft, fid), (tt, tid), types, state.ui_source())
        return {"ok": True}

    async def get_webhooks(request: Request) -> Any:
        return {
            "subscriptions": [s.to_wire() for s in state.webhooks.subs.values()],
            "stats": state.webhooks.stats(),
        }

    async def put_webhooks(request: Request) -> Any:
        app_id = int(request.path_params["appId"])
        sub = state.webhooks.subs.get(app_id)
        if sub is None:
            raise ApiError(404, error_body(f"No app {app_id}", "OBJECT_NOT_FOUND"))
        body = await read_json(request) or {}
        if "target_url" in body or "targetUrl" in body:
            sub.target_url = body.get("target_url", body.get("targetUrl"))
        types = body.get("subscription_types", body.get("subscriptionTypes"))
        if types is not None:
            WebhookSubscriptionConfig(subscription_types=types)  # validates the shape
            sub.set_types(list(types))
        if "installed_in" in body:
            sub.installed_in = set(body["installed_in"])
        return sub.to_wire()

    async def deliveries(request: Request) -> Any:
        q = request.query_params
        items = list(state.webhooks.log)
        if "limit" in q:
            items = items[-int(q["limit"]) :]
        if q.get("body", "true") == "false":
            items = [{k: v for k, v in d.items() if k not in ("body", "headers")} for d in items]
        return {"results": items, "stats": state.webhooks.stats()}

    async def wait_idle(request: Request) -> Any:
        timeout = float(request.query_params.get("timeout", "30"))
        idle = await state.webhooks.wait_idle(timeout)
        return {"idle": idle, "stats": state.webhooks.stats()}

    async def pause(request: Request) -> Any:
        state.webhooks.paused = True
        return state.webhooks.stats()

    async def resume(request: Request) -> Any:
        state.webhooks.resume()
        return state.webhooks.stats()

    async def changes(request: Request) -> Any:
        return {"results": list(state.changes)}

    async def limits(request: Request) -> Any:
        return state.limiter.status()

    async def portals(request: Request) -> Any:
        return {"results": [_portal_wire(p) for p in state.portals.values()]}

    async def put_portal(request: Request) -> Any:
        hub_id = int(request.path_params["hubId"])
        portal = state.portals.get(hub_id)
        if portal is None:
            raise ApiError(404, error_body(f"No portal {hub_id}", "OBJECT_NOT_FOUND"))
        body = await read_json(request) or {}
        allowed = {"plan", "burst_per_10s", "daily_limit", "search_per_second"}
        unknown = set(body) - allowed
        if unknown:
            raise validation_error(f"Unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        updated = type(portal).model_validate({**portal.model_dump(), **body})
        for key in body:
            setattr(portal, key, getattr(updated, key))
        return _portal_wire(portal)

    return [
        r("GET", "/health", health),
        r("GET", "/config", config),
        r("GET", "/requests", requests),
        r("DELETE", "/requests", clear_requests),
        r("GET", "/objects/{objectType}", objects),
        r("GET", "/objects/{objectType}/{objectId:int}", one_object),
        r("POST", "/reset", reset),
        r("GET", "/faults", get_faults),
        r("POST", "/faults", add_fault),
        r("DELETE", "/faults", clear_faults),
        r("DELETE", "/faults/{faultId}", clear_faults),
        r("GET", "/tokens", tokens),
        r("POST", "/tokens/revoke", revoke),
        r("POST", "/tokens/expire", expire),
        r("POST", "/clock", clock),
        r("POST", "/ui/associations", ui_associate),
        r("POST", "/ui/{objectType}", ui_create),
        r("POST", "/ui/{objectType}/merge", ui_merge),
        r("POST", "/ui/{objectType}/churn", ui_churn),
        r("POST", "/ui/{objectType}/churn-portals", ui_churn_portals),
        r("POST", "/ui/{objectType}/{objectId}", ui_edit),
        r("DELETE", "/ui/{objectType}/{objectId}", ui_delete),
        r("POST", "/ui/{objectType}/{objectId}/restore", ui_restore),
        r("GET", "/webhooks", get_webhooks),
        r("PUT", "/webhooks/{appId:int}", put_webhooks),
        r("GET", "/webhooks/deliveries", deliveries),
        r("POST", "/webhooks/wait-idle", wait_idle),
        r("POST", "/webhooks/pause", pause),
        r("POST", "/webhooks/resume", resume),
        r("GET", "/changes", changes),
        r("GET", "/limits", limits),
        r("GET", "/portals", portals),
        r("PUT", "/portals/{hubId:int}", put_portal),
    ]


def _portal_wire(p: Any) -> dict[str, Any]:
    return {
        "hubId": p.hub_id,
        "plan": p.plan,
        "burstPer10s": p.burst,
        "dailyLimit": p.daily,
        "searchPerSecond": p.search_per_second,
        "hubDomain": p.domain,
        "privateAppTokens": [a.token for a in p.private_apps],
    }


def _dump(store: PortalStore, t: str, obj: Any) -> dict[str, Any]:
    d = obj.to_wire(tuple(obj.props))
    d["associations"] = {
        tt: [{"id": str(tid), "types": sorted(types)} for tid, types in store.associations_of(t, obj.id, tt)]
        for tt in ("contacts", "companies", "deals")
        if tt != t
    }
    return d
