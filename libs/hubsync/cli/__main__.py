"""``hubsync``: one command for people.

    hubsync run                      the whole suite on this machine against the sandbox, with a demo
    hubsync trace [ID] [--html F]    one change's trace from `hubsync run`'s local store, as a waterfall
    hubsync status                   health of every service
    hubsync connect --tenant T       start OAuth for a portal (prints the authorize URL)
    hubsync connect --portal P --private-app-token-file F
    hubsync quota --portal P         quota use, circuit state, queue depths
    hubsync dlq list|show|replay|purge --portal P [...]
    hubsync inbound parked|dlq list|show|replay|purge [--portal P] [--id ID ...] [--all]
    hubsync backfill --portal P --object-type contacts [--since ISO] [--checkpoint C]
    hubsync mapping validate FILE [--portal P] | suggest --portal P --object-type T --schema FILE
    hubsync config show|set|history|rollback --portal P | --tenant T ...  (per-portal configuration)
    hubsync keys rotate
    hubsync tokens split TOKENS.json --out DIR
    hubsync tenant list [--json] | show --portal P | delete --portal P [--revoke] --yes

Operating commands talk to the services over gRPC like any internal client: addresses come from
``HUBSYNC_<SERVICE>_ADDRESS``, the credential from ``HUBSYNC_CLI_TOKEN`` or the ``cli`` entry of
``HUBSYNC_CALLER_TOKENS_FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, timestamp_pb2
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from hubsync.cli import config as config_cli
from hubsync.core.callers import hashed, own_token
from hubsync.core.channels import open_channel
from hubsync.core.settings import CoreSettings, load_settings
from hubsync.core.tls import grpc_tls

console = Console()


def main(argv: list[str] | None = None) -> None:
    """Runs the ``hubsync`` command with ``argv`` (default: the process's arguments)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        raise SystemExit(2)
    try:
        code = asyncio.run(args.func(args))
    except KeyboardInterrupt:
        code = 130
    except grpc.aio.AioRpcError as exc:
        console.print(f"[red]error[/]: {exc.code().name}: {exc.details()}")
        code = 1
    raise SystemExit(code or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hubsync", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers()

    run = sub.add_parser("run", help="run the whole suite locally against the sandbox, with a demo")
    run.add_argument("--workdir", type=Path, default=Path(".hubsync"), help="logs and Redis data")
    run.add_argument("--no-demo", action="store_true", help="start everything, skip the demo")
    run.add_argument("--exit-after-demo", action="store_true", help="stop after the demo (CI)")
    run.add_argument(
        "--otlp-endpoint",
        help="send traces and metrics to this OTLP/gRPC endpoint (instead of the local trace store)",
    )
    run.add_argument(
        "--tls", action="store_true", help="mutual TLS on every gRPC hop, with a CA made for this run"
    )
    run.add_argument(
        "--redis-cluster",
        action="store_true",
        help="a local Redis Cluster (three masters) instead of one Redis",
    )
    run.set_defaults(func=_cmd_run)

    trace = sub.add_parser("trace", help="show one change's trace collected by `hubsync run`")
    trace.add_argument("id", nargs="?", help="trace id, HubSpot object or event id, or external id")
    trace.add_argument("--workdir", type=Path, help="the run directory of `hubsync run` (.hubsync)")
    trace.add_argument("--html", type=Path, help="also write the waterfall as an HTML page here")
    trace.add_argument("--all", action="store_true", help="show every trace carrying ID, not the latest")
    trace.set_defaults(func=_cmd_trace)

    status = sub.add_parser("status", help="health of every service")
    status.set_defaults(func=_cmd_status)

    connect = sub.add_parser("connect", help="connect a HubSpot portal")
    connect.add_argument("--tenant", default="default")
    connect.add_argument("--portal", type=int)
    connect.add_argument("--private-app-token-file", type=Path)
    connect.set_defaults(func=_cmd_connect)

    quota = sub.add_parser("quota", help="quota use, circuit state and queue depths of a portal")
    quota.add_argument("--portal", type=int, required=True)
    quota.set_defaults(func=_cmd_quota)

    dlq = sub.add_parser("dlq", help="inspect and replay the dead-letter queue")
    dlq.add_argument("action", choices=["list", "show", "replay", "purge"])
    dlq.add_argument("--portal", type=int, required=True)
    dlq.add_argument("--id", action="append", default=[], help="entry id (repeatable)")
    dlq.add_argument("--status", type=int, action="append", default=[], help="HTTP status filter")
    dlq.add_argument("--all", action="store_true")
    dlq.set_defaults(func=_cmd_dlq)

    inbound = sub.add_parser("inbound", help="inbound events parked (unusable connection) or dead-lettered")
    inbound.add_argument("queue", choices=["parked", "dlq"])
    inbound.add_argument("action", choices=["list", "show", "replay", "purge"])
    inbound.add_argument("--portal", type=int, default=0, help="required except for 'parked list'")
    inbound.add_argument("--id", action="append", default=[], help="event id (repeatable)")
    inbound.add_argument("--all", action="store_true")
    inbound.set_defaults(func=_cmd_inbound)

    backfill = sub.add_parser("backfill", help="export every record of a type, with progress")
    backfill.add_argument("--portal", type=int, required=True)
    backfill.add_argument("--object-type", default="contacts")
    backfill.add_argument("--since", help="ISO-8601 time; default: everything")
    backfill.add_argument("--checkpoint", default="", help="resume from a checkpoint")
    backfill.add_argument("--out", type=Path, help="write records as JSON lines here")
    backfill.set_defaults(func=_cmd_backfill)

    mapping = sub.add_parser("mapping", help="validate or suggest mappings")
    mapping.add_argument("action", choices=["validate", "suggest"])
    mapping.add_argument("file", nargs="?", type=Path)
    mapping.add_argument("--portal", type=int, default=0)
    mapping.add_argument("--object-type", default="contacts")
    mapping.add_argument("--schema", type=Path, help="external schema JSON (suggest)")
    mapping.set_defaults(func=_cmd_mapping)

    config_cli.add_parser(sub, _cmd_config)

    keys = sub.add_parser("keys", help="encryption keys of the token vault")
    keys.add_argument("action", choices=["rotate"])
    keys.set_defaults(func=_cmd_keys)

    tokens = sub.add_parser("tokens", help="caller tokens for Secrets of your own (Helm existingSecret)")
    tokens.add_argument("action", choices=["split"])
    tokens.add_argument("file", type=Path, help='JSON {"<caller>": "<token>"} of every caller')
    tokens.add_argument("--out", type=Path, required=True, help="writes <component>.json per component")
    tokens.set_defaults(func=_cmd_tokens)

    from hubsync.cli.tenant import add_parser as add_tenant_parser

    add_tenant_parser(sub)
    return parser


# --- run -------------------------------------------------------------------------------------


async def _cmd_run(args: argparse.Namespace) -> int:
    try:
        from hubsync.cli.demo import run_demo
        from hubsync.cli.suite import Suite, SuiteError
    except ModuleNotFoundError as exc:
        # The local suite is development tooling, not in the runtime wheel (pyproject.toml).
        console.print(
            f"[red]error[/]: `hubsync run` needs a development install ({exc.name} is missing): "
            "in a clone of hubsync, run ./dev setup (or pip install -e '.[dev]')"
        )
        return 2
    from hubsync.cli.trace_command import trace_command

    workdir: Path = args.workdir.resolve()
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    )
    suite: Suite | None = None
    with progress:
        task = progress.add_task("starting", total=None)

        def say(msg: str) -> None:
            progress.update(task, description=msg)

        suite = Suite(
            workdir,
            otlp_endpoint=args.otlp_endpoint,
            progress=say,
            tls=args.tls,
            traces=not args.otlp_endpoint,
            redis_cluster=args.redis_cluster,
        )
        try:
            await suite.start()
        except SuiteError as exc:
            progress.stop()
            console.print(f"[red]could not start the suite[/]: {exc}")
            await suite.stop()
            return 1
        progress.update(task, description="[green]all services SERVING")
    try:
        _print_endpoints(suite, await suite.health())
        _print_client_examples(suite)
        if not args.no_demo:
            console.rule("demo")
            opener = None if args.otlp_endpoint else trace_command(args.workdir)
            result = await run_demo(suite, console.print, opener)
            console.print(
                f"[green]both directions worked[/]: outbound {result.seconds['outbound']:.2f} s, "
                f"inbound {result.seconds['inbound']:.2f} s (webhook → subscriber)"
            )
        if args.exit_after_demo:
            return 0
        await _until_signalled("\nThe suite keeps running. Press Ctrl-C to stop.")
    except (asyncio.CancelledError, KeyboardInterrupt):
        pass
    finally:
        console.print("stopping (draining in-flight work)")
        await asyncio.shield(suite.stop())
        console.print("stopped cleanly")
    return 0


async def _until_signalled(message: str) -> None:
    """Says ``message`` and waits for Ctrl-C or SIGTERM, taken by the event loop itself (its
    wake-up fd set, so a signal never waits for the loop's next timeout); a second one after that
    interrupts the stop as Python does by default."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        console.print(message)
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _print_endpoints(suite: Any, health: dict[str, str]) -> None:
    table = Table(title="hubsync on this machine")
    table.add_column("process")
    table.add_column("address")
    table.add_column("health")
    table.add_row("redis", suite.redis.url if suite.redis else "", "")
    table.add_row("sandbox (HubSpot)", suite.sandbox_url, "")
    for service in ("auth", "ingress", "mapper", "writer"):
        table.add_row(service, suite.address(service), health.get(service, "?"))
    table.add_row("ingress HTTP", f"{suite.ingress_url}/webhooks/hubspot", "")
    if suite.traces:
        table.add_row("trace collector (OTLP)", f"127.0.0.1:{suite.ports.traces}", "")
    console.print(table)
    console.print(f"logs: {suite.workdir / 'logs'}")
    if suite.traces:
        console.print(f"traces: {suite.trace_store_path} (open one with `hubsync trace ID`)")


def _print_client_examples(suite: Any) -> None:
    from hubsync.cli.client_examples import grpcurl_command, python_snippet

    path = suite.credentials_path
    tls = json.loads(path.read_text())["tls"]
    console.print(f"\nclient credentials (mode 0600, the [bold]client[/] caller's token): {path}")
    console.print("call the suite from your own service, e.g.:")
    grpcurl = grpcurl_command(path, suite.address("mapper"), tls)
    console.print(grpcurl, markup=False, highlight=False, soft_wrap=True)
    console.print("\nor in Python (the hubsync package, or your own code generated from protos/):")
    console.print(python_snippet(path), markup=False, highlight=False, soft_wrap=True)


async def _cmd_trace(args: argparse.Namespace) -> int:
    from hubsync.cli.trace_command import DEFAULT_WORKDIR, show_trace

    return show_trace(console, args.workdir or DEFAULT_WORKDIR, args.id, args.html, args.all)


# --- operating commands ----------------------------------------------------------------------


def _settings() -> tuple[CoreSettings, str | None]:
    core = load_settings(CoreSettings)
    token = os.environ.get("HUBSYNC_CLI_TOKEN") or own_token(core.caller_credentials(), "cli")
    return core, token


def _channel(service: str) -> grpc.aio.Channel:
    core, token = _settings()
    return open_channel(getattr(core, f"{service}_address"), token, grpc_tls(core))


def _print_message(message: Any) -> None:
    console.print_json(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True)))


async def _cmd_status(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    core, _ = _settings()
    worst = 0
    for service in ("auth", "ingress", "mapper", "writer"):
        address = getattr(core, f"{service}_address")
        async with open_channel(address, None, grpc_tls(core)) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=3
                )
                state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as exc:
                state = f"UNREACHABLE ({exc.code().name})"
        worst = worst or int(state != "SERVING")
        console.print(f"{service:8} {address:22} {state}")
    return worst


async def _cmd_connect(args: argparse.Namespace) -> int:
    from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc

    async with _channel("auth") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        if args.private_app_token_file:
            if not args.portal:
                console.print("[red]--portal is required with --private-app-token-file[/]")
                return 2
            token = args.private_app_token_file.read_text().strip()
            reply = await stub.CreatePrivateAppConnection(
                auth_pb2.CreatePrivateAppConnectionRequest(
                    portal_id=args.portal, tenant=args.tenant, access_token=token
                )
            )
            _print_message(reply.connection)
            return 0
        begun = await stub.BeginAuthorization(auth_pb2.BeginAuthorizationRequest(tenant=args.tenant))
        # The start link binds the flow to the browser that opens it; it works once.
        console.print(
            "Open this link, in the browser you will connect with, as a HubSpot admin of the portal:"
        )
        console.print(begun.start_url, soft_wrap=True)
    return 0


async def _cmd_quota(args: argparse.Namespace) -> int:
    from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc

    async with _channel("writer") as channel:
        reply = await writer_pb2_grpc.WriterServiceStub(channel).GetQuotaStatus(
            writer_pb2.GetQuotaStatusRequest(portal_id=args.portal)
        )
    _print_message(reply)
    return 0


async def _cmd_dlq(args: argparse.Namespace) -> int:
    from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc

    async with _channel("writer") as channel:
        stub = writer_pb2_grpc.WriterServiceStub(channel)
        if args.action == "list":
            listed = await stub.ListDeadLetters(
                writer_pb2.ListDeadLettersRequest(portal_id=args.portal, http_statuses=args.status)
            )
            table = Table(title=f"dead letters of portal {args.portal} ({listed.total})")
            for column in ("id", "status", "message", "attempts", "trace"):
                table.add_column(column)
            for dl in listed.dead_letters:
                table.add_row(
                    dl.id, str(dl.error.http_status), dl.error.message[:60], str(dl.attempts), dl.trace_id
                )
            console.print(table)
        elif args.action == "show":
            for entry_id in args.id:
                got = await stub.GetDeadLetter(
                    writer_pb2.GetDeadLetterRequest(portal_id=args.portal, id=entry_id)
                )
                _print_message(got.dead_letter)
        elif args.action == "replay":
            replayed = await stub.ReplayDeadLetters(
                writer_pb2.ReplayDeadLettersRequest(
                    portal_id=args.portal, ids=args.id, http_statuses=args.status, all=args.all
                )
            )
            console.print(f"replayed {replayed.replayed_count}")
        else:
            purged = await stub.PurgeDeadLetters(
                writer_pb2.PurgeDeadLettersRequest(portal_id=args.portal, ids=args.id, all=args.all)
            )
            console.print(f"purged {purged.purged_count}")
    return 0


async def _cmd_inbound(args: argparse.Namespace) -> int:
    from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc

    queue = (
        mapper_pb2.INBOUND_QUEUE_PARKED if args.queue == "parked" else mapper_pb2.INBOUND_QUEUE_DEAD_LETTER
    )
    async with _channel("mapper") as channel:
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        if args.action == "list" and args.queue == "parked" and not args.portal:
            portals = await stub.ListParkedPortals(mapper_pb2.ListParkedPortalsRequest())
            table = Table(title="portals with parked inbound events")
            for column in ("portal", "events", "reason", "since", "detail"):
                table.add_column(column)
            for p in portals.portals:
                since = p.since_time.ToDatetime().isoformat(timespec="seconds")
                table.add_row(str(p.portal_id), str(p.event_count), p.reason, since, p.detail[:60])
            console.print(table)
        elif not args.portal:
            console.print("[red]error[/]: --portal is required")
            return 2
        elif args.action == "list":
            table = Table(title=f"{args.queue} inbound events of portal {args.portal}")
            for column in ("id", "reason", "attempts", "queued", "event"):
                table.add_column(column)
            token = ""
            while True:
                page = await stub.ListInboundEvents(
                    mapper_pb2.ListInboundEventsRequest(
                        portal_id=args.portal, queue=queue, page_size=1000, page_token=token
                    )
                )
                for e in page.events:
                    queued = e.queued_time.ToDatetime().isoformat(timespec="seconds")
                    table.add_row(e.id, e.reason, str(e.attempts), queued, e.raw_event[:60])
                token = page.next_page_token
                if not token:
                    break
            console.print(table)
        elif args.action == "show":
            for entry_id in args.id:
                got = await stub.GetInboundEvent(
                    mapper_pb2.GetInboundEventRequest(portal_id=args.portal, queue=queue, id=entry_id)
                )
                _print_message(got.event)
        elif args.action == "replay":
            replayed = await stub.ReplayInboundEvents(
                mapper_pb2.ReplayInboundEventsRequest(
                    portal_id=args.portal, queue=queue, ids=args.id, all=args.all or args.queue == "parked"
                )
            )
            console.print(f"replayed {replayed.replayed_count}")
        else:
            purged = await stub.PurgeInboundEvents(
                mapper_pb2.PurgeInboundEventsRequest(
                    portal_id=args.portal, queue=queue, ids=args.id, all=args.all
                )
            )
            console.print(f"purged {purged.purged_count}")
    return 0


async def _cmd_backfill(args: argparse.Namespace) -> int:
    from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc

    request = writer_pb2.ExportRecordsRequest(
        portal_id=args.portal, object_type=args.object_type, checkpoint=args.checkpoint
    )
    if args.since:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(datetime.fromisoformat(args.since))
        request.modified_after.CopyFrom(stamp)
    out = args.out.open("a") if args.out else None
    checkpoint = args.checkpoint
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task(f"exporting {args.object_type}", total=None)
            async with _channel("writer") as channel:
                async for page in writer_pb2_grpc.WriterServiceStub(channel).ExportRecords(request):
                    checkpoint = page.checkpoint
                    if out:
                        for record in page.records:
                            out.write(json.dumps(json_format.MessageToDict(record)) + "\n")
                    progress.update(task, completed=page.exported_count, total=page.estimated_total or None)
    except grpc.aio.AioRpcError:
        console.print(f"interrupted; resume with --checkpoint {checkpoint}")
        raise
    finally:
        if out:
            out.close()
    console.print(f"done; checkpoint {checkpoint}")
    return 0


async def _cmd_mapping(args: argparse.Namespace) -> int:
    from hubsync.api.mapper.v1 import mapper_pb2, mapper_pb2_grpc

    async with _channel("mapper") as channel:
        stub = mapper_pb2_grpc.MapperServiceStub(channel)
        if args.action == "validate":
            if not args.file:
                console.print("[red]validate needs a FILE[/]")
                return 2
            reply = await stub.ValidateMapping(
                mapper_pb2.ValidateMappingRequest(
                    yaml=args.file.read_text(), source=str(args.file), portal_id=args.portal
                )
            )
            for err in reply.errors:
                console.print(f"[red]{err}[/]")
            console.print("[green]valid[/]" if reply.valid else "[red]invalid[/]")
            return 0 if reply.valid else 1
        if not args.schema:
            console.print("[red]suggest needs --schema FILE[/]")
            return 2
        request = mapper_pb2.SuggestMappingRequest(portal_id=args.portal, object_type=args.object_type)
        request.external_schema.update(json.loads(args.schema.read_text()))
        suggested = await stub.SuggestMapping(request)
        sys.stdout.write(suggested.yaml)
        if suggested.unmatched_fields:
            console.print(f"unmatched: {', '.join(suggested.unmatched_fields)}", style="yellow")
    return 0


async def _cmd_config(args: argparse.Namespace) -> int:
    async with _channel("mapper") as channel:
        return await config_cli.run(args, channel, console)


async def _cmd_keys(args: argparse.Namespace) -> int:
    from hubsync.api.auth.v1 import auth_pb2, auth_pb2_grpc

    async with _channel("auth") as channel:
        reply = await auth_pb2_grpc.AuthServiceStub(channel).RotateKeys(auth_pb2.RotateKeysRequest())
    console.print(f"re-encrypted {reply.reencrypted_count} connections under key {reply.active_key_id}")
    return 0


SERVICE_NAMES = ("auth", "ingress", "mapper", "writer")


async def _cmd_tokens(args: argparse.Namespace) -> int:
    """Each component's view of the caller tokens: its own token, every other caller's digest."""
    everyone = json.loads(args.file.read_text())
    missing = [name for name in SERVICE_NAMES if not everyone.get(name)]
    if missing:
        console.print(f"[red]{args.file}: no token for {', '.join(missing)}[/]")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for component in SERVICE_NAMES:
        view = {c: token if c == component else hashed(token) for c, token in everyone.items()}
        path = args.out / f"{component}.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(view, indent=2) + "\n")
        console.print(f"{path}: {component}'s token, digests of {len(view) - 1} other callers")
    return 0


if __name__ == "__main__":
    main()
