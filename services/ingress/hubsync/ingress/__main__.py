import asyncio
import os

from hubsync.core.service import main
from hubsync.ingress.service import build

# uvloop (shipped with uvicorn[standard]) roughly halves the per-request cost of the socket work
# the webhook edge is made of; HUBSYNC_INGRESS_UVLOOP=false keeps the stock loop.
if os.environ.get("HUBSYNC_INGRESS_UVLOOP", "true").lower() not in ("0", "false", "no"):
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

main("ingress", build)
