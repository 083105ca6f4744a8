"""``python -m hubsync.sandbox``: run the local HubSpot standalone."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import sys

from .config import PortalConfig, SandboxConfig
from .server import SandboxServer


def build_config(args: argparse.Namespace) -> SandboxConfig:
    cfg = SandboxConfig.load(args.config) if args.config else SandboxConfig()
    update: dict[str, object] = {}
    if args.token_ttl is not None:
        update["token_ttl_s"] = args.token_ttl
    if args.index_lag_ms is not None:
        update["search_index_lag_ms"] = args.index_lag_ms
    if args.no_rate_limits:
        update["rate_limits_enabled"] = False
    if args.retry_scale is not None:
        update["webhook_retry_scale"] = args.retry_scale
    if args.seed is not None:
        update["seed"] = args.seed
    if args.plan or args.burst is not None or args.daily is not None:
        portals = []
        for p in cfg.portals:
            changes: dict[str, object] = {}
            if args.plan:
                changes["plan"] = args.plan
            if args.burst is not None:
                changes["burst_per_10s"] = args.burst
            if args.daily is not None:
                changes["daily_limit"] = args.daily
            portals.append(PortalConfig.model_validate({**p.model_dump(), **changes}))
        update["portals"] = portals
    if args.webhook_url:
        apps = []
        for a in cfg.apps:
            a2 = a.model_copy(deep=True)
            a2.webhooks.target_url = args.webhook_url
            apps.append(a2)
        update["apps"] = apps
    return cfg.model_copy(update=update) if update else cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hubsync.sandbox", description="A faithful local HubSpot.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090, help="0 picks a free port (default 8090)")
    ap.add_argument("--config", help="YAML or JSON file with a SandboxConfig")
    ap.add_argument("--plan", choices=["free", "starter", "professional", "enterprise", "api_add_on"])
    ap.add_argument("--burst", type=int, help="requests per 10 s per portal (overrides the plan)")
    ap.add_argument("--daily", type=int, help="daily request budget per portal (overrides the plan)")
    ap.add_argument("--no-rate-limits", action="store_true", help="never answer 429 (headers still sent)")
    ap.add_argument("--token-ttl", type=int, help="OAuth access token lifetime in seconds (default 1800)")
    ap.add_argument("--index-lag-ms", type=int, help="search index lag in milliseconds (default 0)")
    ap.add_argument("--webhook-url", help="target URL of every app's webhooks")
    ap.add_argument("--retry-scale", type=float, help="multiplies the 24 h webhook retry schedule")
    ap.add_argument("--seed", type=int)
    args = ap.parse_args(argv)
    cfg = build_config(args)

    async def run() -> None:
        async with SandboxServer(cfg, host=args.host, port=args.port) as sb:
            print(f"hubsync sandbox listening on {sb.base_url}", flush=True)
            for p in cfg.portals:
                for pa in p.private_apps:
                    print(f"  portal {p.hub_id} ({p.plan}, {p.burst}/10s): private-app token {pa.token}")
            for a in cfg.apps:
                print(
                    f"  app {a.app_id}: client_id={a.client_id} client_secret={a.client_secret} "
                    f"webhooks -> {a.webhooks.target_url or '(no target URL)'}"
                )
            print(
                f"  admin API: {sb.base_url}/_sandbox/requests, /_sandbox/objects/contacts, ...", flush=True
            )
            await asyncio.Event().wait()

    # httpcore imports sniffio inside every request and falls back to asyncio when it is missing
    # (anyio 4 no longer brings it); a failed import is not cached, so every webhook delivery
    # searched sys.path again (~13 % of the sandbox's CPU under load). None fails it at once.
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop  # uvicorn[standard] brings it; about twice the throughput of asyncio's loop

            loop_factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover
            loop_factory = None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
