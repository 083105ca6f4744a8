"""The soak's verdict, computed from the sandbox's own state (HubSpot's truth) and from what the
clients saw. Nothing here trusts hubsync's word about itself.

Correctness checks (each must be 0; the CI variant asserts them):

- ``lost``: a pushed record HubSpot does not have, or whose push the client was never able to
  get accepted.
- ``duplicated``: extra HubSpot records for one external id.
- ``stale``: a pushed record whose HubSpot value is not the last one pushed, plus a UI-edited
  record whose last value the subscriber never received (or received out of order last).
- ``echo_during_soak`` / ``echo_after_reconcile``: feed changes for records only hubsync wrote
  (nobody edited them in HubSpot), during the load, and after one reconciliation pass.
- ``own_429``: 429s from the portal's own limiter (the sandbox's request log says which 429s were
  injected and which were real).
- ``order_regressions``: a first delivery of a record's change older than one already delivered.
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from .load import Delivery, FeedLog, PushLog
from .processes import HealthLog
from .profile import Profile

CORRECTNESS = (
    "lost",
    "duplicated",
    "stale",
    "echo_during_soak",
    "echo_after_reconcile",
    "own_429",
    "order_regressions",
)


def edit_number(value: str | None) -> int:
    """``churn-17`` → 17 (the sandbox's UI edit n sets ``churn-n``); anything else → -1."""
    if value and value.startswith("churn-"):
        try:
            return int(value[6:])
        except ValueError:
            return -1
    return -1


def by_external_id(contacts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in contacts:
        if c.get("archived"):
            continue
        ext = (c.get("properties") or {}).get("external_id")
        if ext:
            out[str(ext)].append(c)
    return out


def outbound_state(push: PushLog, contacts: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    missing = [e for e in push.expected if e not in contacts]
    stale = []
    older = 0
    for ext, want in push.expected.items():
        found = contacts.get(ext)
        if not found:
            continue
        have = (found[0].get("properties") or {}).get("firstname")
        if have != want:
            stale.append({"external_id": ext, "want": want, "have": have})
            # "c-<i>" (the create) where "u-<i>" (the later update) was wanted: an older write won
            if have and want.startswith("u-") and have.startswith("c-"):
                older += 1
    never_accepted = sorted(set(push.not_accepted) - set(missing))
    return {
        "missing": missing,
        "never_accepted": never_accepted,
        "stale": stale,
        "stale_older_value": older,
    }


def inbound_state(
    inbound_ids: dict[str, str], contacts: dict[str, list[dict[str, Any]]], feed: FeedLog
) -> dict[str, Any]:
    """Whether the subscriber ended with each UI-edited record's final value."""
    last: dict[str, str | None] = {}
    for d in feed.deliveries:
        if d.hubspot_id and d.kind in ("CHANGE_KIND_UPDATED", "CHANGE_KIND_CREATED"):
            last[d.hubspot_id] = d.first_name
    missed = []
    for ext, hs_id in inbound_ids.items():
        found = contacts.get(ext)
        truth = (found[0].get("properties") or {}).get("firstname") if found else None
        if last.get(hs_id) != truth:
            missed.append({"external_id": ext, "hubspot": truth, "subscriber": last.get(hs_id)})
    return {"final_value_not_delivered": missed}


def order_regressions(deliveries: list[Delivery], inbound_hs: set[str]) -> dict[str, int]:
    first_seen: dict[str, int] = {}
    regress_first = 0
    regress_redelivery = 0
    for d in deliveries:
        if d.hubspot_id not in inbound_hs or d.kind != "CHANGE_KIND_UPDATED":
            continue
        n = edit_number(d.first_name)
        best = first_seen.get(d.hubspot_id, -2)
        if n < best:
            if d.attempt <= 1:
                regress_first += 1
            else:
                regress_redelivery += 1
        else:
            first_seen[d.hubspot_id] = n
    return {"first_delivery": regress_first, "redelivery": regress_redelivery}


def echoes(deliveries: list[Delivery], outbound_hs: set[str]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for d in deliveries:
        if d.hubspot_id in outbound_hs or d.external_id.startswith("o-"):
            out[d.phase] += 1
    return {"soak": out["soak"], "reconcile": out["reconcile"]}


@dataclass(frozen=True)
class Edit:
    """One UI edit as the sandbox made it (its change log): record, edit number, when."""

    hubspot_id: str
    number: int
    occur_s: float  # seconds since the soak's clock


def ui_edits(changes: list[dict[str, Any]], inbound_hs: set[str], wall_clock: float) -> list[Edit]:
    return [
        Edit(str(c["objectId"]), edit_number(c.get("propertyValue")), c["occurredAt"] / 1000 - wall_clock)
        for c in changes
        if c.get("changeSource") == "CRM_UI"
        and c.get("propertyName") == "firstname"
        and str(c.get("objectId")) in inbound_hs
        and edit_number(c.get("propertyValue")) >= 0
    ]


def latency(
    edits: list[Edit], deliveries: list[Delivery], window: tuple[float, float] | None
) -> dict[str, Any]:
    """Webhook → subscriber, per UI edit: from the edit (the sandbox's ``occurredAt``) to the
    first delivery that shows it or a later edit of the same record. Coalescing merges edits, so
    a change's own ``occurTime`` (its latest edit) would hide how long the earlier ones waited."""
    seen: dict[str, tuple[list[float], list[int]]] = {}
    for d in sorted(deliveries, key=lambda d: d.at):
        n = edit_number(d.first_name)
        times, best = seen.setdefault(d.hubspot_id, ([], []))
        if n > (best[-1] if best else -1):
            times.append(d.at)
            best.append(n)
    every: list[float] = []
    in_window: list[float] = []
    never = 0
    buckets: dict[int, list[float]] = defaultdict(list)
    for e in edits:
        times, best = seen.get(e.hubspot_id, ([], []))
        i = bisect.bisect_left(best, e.number)
        if i == len(best):
            never += 1
            continue
        lat = times[i] - e.occur_s
        every.append(lat)
        buckets[int(e.occur_s // 5) * 5].append(lat)
        if window and window[0] <= e.occur_s < window[1]:
            in_window.append(lat)
    return {
        "edits": len(edits),
        "never_seen": never,
        "overall": _quantiles(every),
        "fault_minute": _quantiles(in_window),
        # by when the edit was made (5 s buckets): where the slow ones come from
        "by_edit_time_5s": {str(k): _quantiles(v) for k, v in sorted(buckets.items())},
    }


def _quantiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50_s": None, "p99_s": None, "max_s": None}
    v = sorted(values)
    q = statistics.quantiles(v, n=100) if len(v) > 1 else [v[0]] * 99
    return {"n": len(v), "p50_s": round(q[49], 3), "p99_s": round(q[98], 3), "max_s": round(v[-1], 3)}


def request_log_summary(log: dict[str, Any]) -> dict[str, Any]:
    counts = log.get("counts", {})
    injected_by_status: Counter[str] = Counter()
    for e in log.get("entries", []):
        if e.get("origin") == "fault":
            injected_by_status[str(e["status"])] += 1
    own = counts.get("rateLimitedByPolicy")
    return {
        "total": log.get("total"),
        "by_status": counts.get("byStatus", {}),
        "by_origin": counts.get("byOrigin", {}),
        "faults_by_kind": counts.get("faultsByKind", {}),
        "injected_by_status": dict(injected_by_status),
        # None: a sandbox without the request log's origins cannot tell (counted as a failure)
        "own_429_by_policy": own,
        "own_429": None if own is None else sum(own.values()),
        "writes": sum(
            n
            for ep, n in counts.get("byEndpoint", {}).items()
            if ep.split(" ")[0] in ("POST", "PATCH")
            and ("batch/upsert" in ep or "batch/create" in ep or "batch/update" in ep)
        ),
        "batch_reads": sum(n for ep, n in counts.get("byEndpoint", {}).items() if "batch/read" in ep),
    }


def recovery(
    events: list[dict[str, Any]], health: HealthLog, feed: FeedLog, settled: bool
) -> list[dict[str, Any]]:
    """Per fault: when it ended, when every service was SERVING again and the feed delivered
    again; recovered when both happened and the suite then drained by itself (no step but the
    restart an orchestrator makes). Whether what it drained to is right is the checks' business."""
    out = []
    for ev in events:
        end = ev.get("ended_s", ev["at_s"])
        serving = health.all_serving_after(end)
        delivered = next((d.at for d in feed.deliveries if d.at >= end), None)
        recovered_at = None if serving is None or delivered is None else max(serving, delivered)
        out.append(
            {
                **ev,
                "all_serving_s": None if serving is None else round(serving - end, 1),
                "next_feed_delivery_s": None if delivered is None else round(delivered - end, 1),
                "recovered": settled and recovered_at is not None,
                "recovery_s": None if recovered_at is None else round(recovered_at - end, 1),
            }
        )
    return out


def verdict(
    profile: Profile,
    push: PushLog,
    feed: FeedLog,
    inbound_ids: dict[str, str],
    contacts_raw: list[dict[str, Any]],
    changes: list[dict[str, Any]],
    wall_clock: float,
    requests: dict[str, Any],
    events: list[dict[str, Any]],
    health: HealthLog,
    extra: dict[str, Any],
) -> dict[str, Any]:
    contacts = by_external_id(contacts_raw)
    outbound = outbound_state(push, contacts)
    inbound = inbound_state(inbound_ids, contacts, feed)
    outbound_hs = {str(c[0]["id"]) for e, c in contacts.items() if e.startswith("o-")}
    inbound_hs = set(inbound_ids.values())
    dup = {e: len(c) for e, c in contacts.items() if len(c) > 1}
    reqs = request_log_summary(requests)
    echo = echoes(feed.deliveries, outbound_hs)
    order = order_regressions(feed.deliveries, inbound_hs)
    checks = {
        "lost": len(outbound["missing"]) + len(outbound["never_accepted"]),
        "duplicated": sum(n - 1 for n in dup.values()),
        "stale": len(outbound["stale"]) + len(inbound["final_value_not_delivered"]),
        "echo_during_soak": echo["soak"],
        "echo_after_reconcile": echo["reconcile"],
        "own_429": reqs["own_429"] if reqs["own_429"] is not None else -1,
        "order_regressions": order["first_delivery"],
    }
    settled = bool(extra.get("drain", {}).get("settled"))
    faults = recovery(events, health, feed, settled)
    return {
        "checks": checks,
        "passed": all(v == 0 for v in checks.values()) and all(f["recovered"] for f in faults),
        "details": {
            "outbound": {
                "records": len(push.expected),
                "accepted_pushes": push.accepted,
                "outcomes": dict(push.outcomes),
                "client_errors_by_code": dict(push.rpc_errors),
                "missing": outbound["missing"][:20],
                "never_accepted": outbound["never_accepted"][:20],
                "stale": outbound["stale"][:20],
                "stale_count": len(outbound["stale"]),
                "stale_older_value": outbound["stale_older_value"],
            },
            "inbound": {
                "records": len(inbound_ids),
                "final_value_not_delivered": inbound["final_value_not_delivered"][:20],
                "final_value_not_delivered_count": len(inbound["final_value_not_delivered"]),
                "order_regressions_on_redelivery": order["redelivery"],
            },
            "duplicated": dict(list(dup.items())[:20]),
            "feed": {
                "deliveries": len(feed.deliveries),
                "redeliveries": sum(1 for d in feed.deliveries if d.attempt > 1),
                "reconnects": feed.reconnects,
                "stream_errors": dict(feed.stream_errors),
                "ack_errors": dict(feed.ack_errors),
                "acked": feed.acked,
            },
            "requests": reqs,
            "latency": latency(
                ui_edits(changes, inbound_hs, wall_clock), feed.deliveries, profile.fault_window()
            ),
            "faults": faults,
            "health_not_serving_samples": health.not_serving(0, 1e9),
            **extra,
        },
    }


def table(result: dict[str, Any]) -> str:
    """The human summary."""
    c = result["checks"]
    d = result["details"]
    rows: list[tuple[str, str, str]] = []

    def ok(v: int) -> str:
        return "ok" if v == 0 else "FAIL"

    names = {
        "lost": "lost (pushed, not in HubSpot)",
        "duplicated": "duplicated (extra records per id)",
        "stale": "stale (not the last value pushed/edited)",
        "echo_during_soak": "echo changes in the feed, during soak",
        "echo_after_reconcile": "echo changes after a reconcile pass",
        "own_429": "429s from the portal's own limiter",
        "order_regressions": "per-record order regressions (feed)",
    }
    for key in CORRECTNESS:
        rows.append((names[key], str(c[key]), ok(c[key])))
    ob, ib = d["outbound"], d["inbound"]
    rows.append(("  stale pushed / older value won", f"{ob['stale_count']} / {ob['stale_older_value']}", ""))
    rows.append(
        (
            "  UI edits whose final value never reached the feed",
            str(ib["final_value_not_delivered_count"]),
            "",
        )
    )
    rows.append(("  regressions on redelivery (info)", str(ib["order_regressions_on_redelivery"]), ""))
    lat = d["latency"]
    for key, label in (
        ("overall", "inbound latency, whole soak"),
        ("fault_minute", "inbound latency, fault minute"),
    ):
        q = lat[key]
        rows.append(
            (label, f"p50 {_s(q['p50_s'])}  p99 {_s(q['p99_s'])}  max {_s(q['max_s'])}  (n={q['n']})", "")
        )
    rows.append(("  UI edits never seen by the subscriber", f"{lat['never_seen']} of {lat['edits']}", ""))
    reqs = d["requests"]
    rows.append(("injected faults by status", _fmt(reqs["injected_by_status"]), ""))
    rows.append(("client gRPC errors on push, by code", _fmt(ob["client_errors_by_code"]), ""))
    rows.append(("feed stream errors, by code", _fmt(d["feed"]["stream_errors"]), ""))
    rows.append(("feed ack errors, by code", _fmt(d["feed"]["ack_errors"]), ""))
    rows.append(
        (
            "reconcile pass: found / scanned",
            f"{d.get('reconcile', {}).get('found')} / {d.get('reconcile', {}).get('scanned')}",
            "",
        )
    )
    rows.append(
        (
            "drain",
            f"{d.get('drain', {}).get('seconds')} s, settled={d.get('drain', {}).get('settled')}, "
            f"converged={d.get('drain', {}).get('converged')}",
            "",
        )
    )
    exits = d.get("service_exits", [])
    rows.append(
        (
            "services that exited by themselves (restarted)",
            ", ".join(f"{e['service']} at {e['at_s']:.0f}s" for e in exits) or "none",
            "",
        )
    )
    for f in d["faults"]:
        label = f"fault t={f['at_s']:.0f}s {f['kind']} {f.get('target', '')}".rstrip()
        rows.append((label, f"recovery {_s(f['recovery_s'])}", "ok" if f["recovered"] else "FAIL"))
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    lines = [f"{'check':<{width}}  {'value':<{vwidth}}  verdict", "-" * (width + vwidth + 11)]
    lines += [f"{a:<{width}}  {b:<{vwidth}}  {v}" for a, b, v in rows]
    lines.append(f"\nPASSED: {result['passed']}")
    return "\n".join(lines)


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def _fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items())) or "none"
