"""``hubsync config``: per-portal and per-tenant configuration through mapper's ConfigService.

hubsync config show     --portal P | --tenant T  [KIND]
hubsync config set      --portal P | --tenant T  mappings FILE [FILE ...]
hubsync config set      --portal P | --tenant T  limits [--burst N] [--daily N]
hubsync config set      --portal P | --tenant T  pilot on|off [--reason TEXT]
hubsync config set      --portal P               tenant NAME
hubsync config set      --portal P | --tenant T  KIND --clear
hubsync config history  --portal P | --tenant T  KIND
hubsync config rollback --portal P | --tenant T  KIND VERSION
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from rich.console import Console
from rich.table import Table

from hubsync.api.common.v1 import config_pb2 as doc_pb2
from hubsync.api.mapper.v1 import config_pb2, config_pb2_grpc

KINDS = {
    "mappings": doc_pb2.CONFIG_KIND_MAPPINGS,
    "limits": doc_pb2.CONFIG_KIND_LIMITS,
    "pilot": doc_pb2.CONFIG_KIND_PILOT,
    "tenant": doc_pb2.CONFIG_KIND_TENANT,
}

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def add_parser(sub: Any, run: Command) -> None:
    """Adds ``config`` and its actions to the CLI's subparsers; ``run`` runs the chosen action."""
    config = sub.add_parser("config", help="per-portal / per-tenant mappings, limits, pilot (versioned)")
    actions = config.add_subparsers(dest="action", required=True)

    def scoped(name: str, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_)
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--portal", type=int, default=0)
        where.add_argument("--tenant", default="")
        p.set_defaults(func=run)
        return p

    show = scoped("show", "the version in force (and, for a portal, where each mapping comes from)")
    show.add_argument("kind", nargs="?", choices=sorted(KINDS), default="mappings")
    put = scoped("set", "store a new version (validated first; a refusal changes nothing)")
    put.add_argument("kind", choices=sorted(KINDS))
    put.add_argument("values", nargs="*", help="mapping files | on/off | tenant name")
    put.add_argument("--burst", type=int, help="limits: requests per burst window")
    put.add_argument("--daily", type=int, help="limits: requests per day (0: none)")
    put.add_argument("--reason", default="", help="pilot: why (shown in refusals)")
    put.add_argument("--clear", action="store_true", help="remove the override (inherit again)")
    put.add_argument("--expected-version", type=int, help="refuse unless this version is in force")
    history = scoped("history", "stored versions, newest first")
    history.add_argument("kind", choices=sorted(KINDS))
    rollback = scoped("rollback", "store an earlier version again, as a new version")
    rollback.add_argument("kind", choices=sorted(KINDS))
    rollback.add_argument("version", type=int)
    rollback.add_argument("--expected-version", type=int)


def document(args: argparse.Namespace) -> doc_pb2.ConfigDocument:
    """The document ``config set`` stores (raises SystemExit with a message on bad arguments)."""
    doc = doc_pb2.ConfigDocument()
    if args.clear:
        return doc
    values: list[str] = args.values
    if args.kind == "mappings":
        if not values:
            raise SystemExit("config set mappings: name at least one mapping file")
        files = [Path(v) for v in values]
        doc.mappings.files.extend(doc_pb2.MappingFile(name=f.name, yaml=f.read_text()) for f in files)
    elif args.kind == "limits":
        if args.burst is None and args.daily is None:
            raise SystemExit("config set limits: give --burst and/or --daily")
        if args.burst is not None:
            doc.limits.burst_limit = args.burst
        if args.daily is not None:
            doc.limits.daily_limit = args.daily
    elif args.kind == "pilot":
        if values not in (["on"], ["off"]):
            raise SystemExit("config set pilot: on or off")
        doc.pilot.enabled = values == ["on"]
        doc.pilot.reason = args.reason
    else:
        if len(values) != 1:
            raise SystemExit("config set tenant: name the tenant")
        doc.tenant.tenant = values[0]
    return doc


async def run(args: argparse.Namespace, channel: grpc.aio.Channel, console: Console) -> int:
    """Runs one ``config`` action over ``channel`` (mapper)."""
    stub = config_pb2_grpc.ConfigServiceStub(channel)
    scope = config_pb2.ConfigScope(portal_id=args.portal, tenant=args.tenant)
    label = f"tenant:{args.tenant}" if args.tenant else f"portal:{args.portal}"
    kind = KINDS[args.kind]
    expected = getattr(args, "expected_version", None)
    try:
        if args.action == "show":
            got = await stub.GetConfig(config_pb2.GetConfigRequest(scope=scope, kind=kind), timeout=30)
            _show(console, label, args.kind, got)
        elif args.action == "set":
            req = config_pb2.SetConfigRequest(scope=scope, kind=kind, document=document(args))
            if expected is not None:
                req.expected_version = expected
            done = await stub.SetConfig(req, timeout=60)
            console.print(f"{label} {args.kind}: version {done.version.version} stored")
        elif args.action == "history":
            listed = await stub.ListConfigVersions(
                config_pb2.ListConfigVersionsRequest(scope=scope, kind=kind), timeout=30
            )
            _history(console, label, args.kind, listed.versions)
        else:
            rb = config_pb2.RollbackConfigRequest(scope=scope, kind=kind, version=args.version)
            if expected is not None:
                rb.expected_version = expected
            back = await stub.RollbackConfig(rb, timeout=60)
            console.print(
                f"{label} {args.kind}: version {args.version} restored as version {back.version.version}"
            )
    except grpc.aio.AioRpcError as exc:
        console.print(f"[red]error[/]: {exc.code().name}: {exc.details()}")
        for where, what in field_violations(exc):
            console.print(f"  {where}: {what}", markup=False, highlight=False)
        return 1
    return 0


def field_violations(exc: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations of a failed call (file, line and path of each problem)."""
    found: list[tuple[str, str]] = []
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                found += [(v.field, v.description) for v in bad.field_violations]
    return found


def _summary(doc: doc_pb2.ConfigDocument) -> str:
    kind = doc.WhichOneof("kind")
    if kind is None:
        return "(cleared: inherits)"
    if kind == "mappings":
        return "files: " + ", ".join(f.name for f in doc.mappings.files)
    return json_format.MessageToJson(getattr(doc, kind), indent=None) or "{}"


def _when(version: config_pb2.ConfigVersion) -> str:
    ms = version.create_time.ToMilliseconds()
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else ""


def _show(console: Console, label: str, kind: str, got: config_pb2.GetConfigResponse) -> None:
    current = got.current
    if current.version:
        console.print(
            f"{label} {kind}: version {current.version} by {current.author} at {_when(current)}: "
            f"{_summary(current.document)}",
            markup=False,
            highlight=False,
        )
    else:
        console.print(f"{label} {kind}: no override (the default applies)")
    if got.tenant:
        console.print(f"tenant: {got.tenant}")
    if got.effective_mappings:
        table = Table("object type", "layer", "source")
        for m in got.effective_mappings:
            table.add_row(m.object_type, m.layer, m.source)
        console.print(table)


def _history(console: Console, label: str, kind: str, versions: Any) -> None:
    table = Table("version", "at", "author", "document", title=f"{label} {kind}")
    for v in versions:
        restored = f" (rollback to {v.restored_version})" if v.restored_version else ""
        table.add_row(str(v.version), _when(v), v.author, _summary(v.document) + restored)
    console.print(table)
