"""``hubsync tenant list|show|delete``: the portals hubsync knows, one portal's state, and
removing everything stored for a portal.

An operator tool that talks to Redis directly (``HUBSYNC_REDIS_*``, like the services), through
:mod:`hubsync.core.tenants`; only ``delete --revoke`` calls a service (auth's
``RevokeConnection``, with the ``cli`` caller token). docs/operations.md says why.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

import grpc
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from hubsync.core.redis import create_redis
from hubsync.core.settings import CoreSettings, load_settings
from hubsync.core.tenants import DeleteReport, PortalSummary, TenantStore

console = Console()


def add_parser(sub: Any) -> None:
    """Adds the ``tenant`` subcommand to the CLI's subparsers ``sub``."""
    tenant = sub.add_parser("tenant", help="portals hubsync knows: list, show one, delete one's data")
    tenant.add_argument("action", choices=["list", "show", "delete"])
    tenant.add_argument("--portal", type=int, default=0, help="show, delete: the portal (HubSpot account id)")
    tenant.add_argument("--page-size", type=int, default=500, help="list: portals per Redis round trip")
    tenant.add_argument("--page-token", default="", help="list: continue where a listing stopped")
    tenant.add_argument("--pages", type=int, default=0, help="list: stop after this many pages (0: all)")
    tenant.add_argument("--json", action="store_true", help="list: one JSON object per line")
    tenant.add_argument("--yes", action="store_true", help="delete: really delete (without it: a dry run)")
    tenant.add_argument(
        "--revoke", action="store_true", help="delete: revoke the HubSpot refresh token first (through auth)"
    )
    tenant.set_defaults(func=cmd_tenant)


async def cmd_tenant(args: argparse.Namespace) -> int:
    """Runs ``hubsync tenant list|show|delete``; returns the exit status."""
    if args.action != "list" and args.portal <= 0:
        console.print("[red]error[/]: --portal must be a positive HubSpot account id")
        return 2
    if args.page_size <= 0 or args.page_size > 10_000:
        console.print("[red]error[/]: --page-size must be between 1 and 10000")
        return 2
    settings = load_settings(CoreSettings)
    redis = create_redis(settings)
    try:
        store = TenantStore(redis, ready_shards=settings.ready_shards)
        if args.action == "list":
            return await _list(store, args)
        if args.action == "show":
            return await _show(store, args.portal)
        return await _delete(store, args)
    except RedisError as exc:
        where = "the sentinels' master" if settings.redis_sentinels else "HUBSYNC_REDIS_URL"
        console.print(f"[red]error[/]: Redis ({where}): {type(exc).__name__}: {exc}")
        return 1
    finally:
        await redis.aclose()


async def _list(store: TenantStore, args: argparse.Namespace) -> int:
    token, pages, count = args.page_token, 0, 0
    if not args.json:
        console.print(f"{'portal':>12}  {'tenant':20} {'connection':14} events writes parked", style="bold")
    while True:
        try:
            rows, token = await store.list_portals(args.page_size, token)
        except ValueError as exc:
            console.print(f"[red]error[/]: --page-token: {exc}")
            return 2
        for row in rows:
            _print_row(row, as_json=args.json)
        count, pages = count + len(rows), pages + 1
        if not token or (args.pages and pages >= args.pages):
            break
    if not args.json:
        more = f"; more with --page-token {token}" if token else ""
        console.print(f"{count} portals{more}", style="dim")
    elif token:
        print(json.dumps({"next_page_token": token}))
    return 0


def _print_row(row: PortalSummary, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(row)))
        return

    def yes(flag: bool) -> str:
        return "yes" if flag else "-"

    connection = row.connection or ("(none)" if not row.connected else "?")
    console.print(
        f"{row.portal_id:>12}  {row.tenant[:20]:20} {connection:14} "
        f"{yes(row.events):6} {yes(row.writes):6} {yes(row.parked)}",
        markup=False,
        highlight=False,
    )


async def _show(store: TenantStore, portal: int) -> int:
    state = await store.show(portal)
    if not state.keys and not state.registries:
        console.print(f"nothing stored for portal {portal}")
        return 1
    console.print_json(json.dumps(asdict(state)))
    return 0


def _print_report(report: DeleteReport, title: str, registries: str) -> None:
    table = Table(title=title)
    table.add_column("key pattern")
    table.add_column("keys", justify="right")
    for pattern, count in report.keys.items():
        table.add_row(pattern, str(count))
    table.add_row("[bold]total", f"[bold]{report.total}")
    console.print(table)
    for key in report.registries:
        console.print(f"{registries} {key}", markup=False, highlight=False)


async def _delete(store: TenantStore, args: argparse.Namespace) -> int:
    portal = args.portal
    planned = await store.census(portal)
    if not planned.keys and not planned.registries:
        console.print(f"nothing stored for portal {portal}: nothing to delete")
        return 0
    if not args.yes:
        _print_report(planned, f"portal {portal}: would delete", "would remove the portal from")
        console.print("[red]refusing to delete without --yes[/] (this cannot be undone)")
        return 2
    if args.revoke and not await _revoke(portal):
        return 1
    report = await store.delete(portal)
    _print_report(report, f"portal {portal}: deleted", "removed the portal from")
    if report.remaining:
        console.print(
            f"[yellow]{report.remaining} keys of portal {portal} appeared while deleting[/]: a service "
            "still works for it (webhooks still arrive, writes queued); stop that, then run this again"
        )
        return 1
    return 0


async def _revoke(portal: int) -> bool:
    """Revokes the refresh token at HubSpot through auth; False (and why) if that failed."""
    from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc
    from hubsync.cli.__main__ import _channel

    try:
        async with _channel("auth") as channel:
            await auth_pb2_grpc.AuthServiceStub(channel).RevokeConnection(
                auth_pb2.RevokeConnectionRequest(portal_id=portal), timeout=30
            )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            console.print(f"portal {portal} has no connection: nothing to revoke")
            return True
        console.print(
            f"[red]could not revoke portal {portal}'s token[/] ({exc.code().name}: {exc.details()}); "
            "nothing deleted. Fix that, or delete without --revoke (the token then stays valid at "
            "HubSpot until the app is uninstalled)"
        )
        return False
    console.print(f"revoked portal {portal}'s refresh token at HubSpot")
    return True
