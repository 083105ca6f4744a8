"""The mapper's settings (``HUBSYNC_MAPPER_*``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PACKAGED_MAPPINGS", "MapperSettings"]

PACKAGED_MAPPINGS = Path(__file__).parent / "default_mappings"


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class MapperSettings(BaseSettings):
    """Values only the mapper reads."""

    model_config = SettingsConfigDict(env_prefix="HUBSYNC_MAPPER_", extra="ignore")

    # Run on uvloop (shipped with uvicorn[standard]): less CPU per change, most of which is socket
    # and event-loop work. Read by ``__main__`` only, before the loop starts.
    uvloop: bool = True
    # Directory of mapping YAML files; the packaged default mappings when unset.
    mappings_dir: Path = PACKAGED_MAPPINGS
    # This replica's consumer name in the `mapper` group of the event streams.
    consumer_name: str = Field(default_factory=_default_consumer, min_length=1)
    # Events of one record arriving within this window become one change.
    coalesce_window_ms: int = Field(default=50, ge=0, le=60_000)
    # Event-stream entries unacked this long by a (dead) replica are claimed by another.
    visibility_timeout_ms: int = Field(default=30_000, ge=100)
    # Most event-stream entries of one portal per turn (one XREADGROUP of that portal's stream);
    # a portal with more goes to the back of the line, so a backlog never holds up the others.
    read_batch_size: int = Field(default=100, ge=1, le=10_000)
    # Ids per writer ReadRecords call (writer sends HubSpot at most 100 per batch/read).
    hydrate_batch_size: int = Field(default=100, ge=1, le=100)
    # Deadline of one ReadRecords call. Deadlines nest: writer gives one HubSpot call a share of
    # the time left (HUBSYNC_WRITER_HTTP_DEADLINE_SHARE, 0.4), so a hung batch/read is cut after
    # 8 s and its ids read again in halves inside the same 20 s; only that batch waits.
    hydrate_deadline_s: float = Field(default=20.0, gt=0, le=3600)
    # Portals whose turns run at once (one turn per portal at a time): a slow HubSpot read holds
    # up only its own portal.
    max_batches_in_flight: int = Field(default=8, ge=1, le=256)
    # A portal's turn waits this long for its batches; a batch still in flight then (a hung read,
    # writer's retries) no longer holds the portal's next turn back (its records' later events
    # wait for it: order per record is kept).
    stalled_batch_ms: int = Field(default=1000, ge=1, le=600_000)
    # Non-transient failures of an event (INTERNAL, a HubSpot refusal) before it is dead-lettered.
    inbound_max_attempts: int = Field(default=10, ge=1, le=1000)
    # A parked portal (unusable connection) is checked again after this long, doubling each time
    # up to the max; auth's announcement of a connection change re-checks it at once.
    parked_recheck_s: float = Field(default=60.0, gt=0)
    parked_recheck_max_s: float = Field(default=900.0, gt=0)
    # How often the custom objects (their type ids) of the portals that used one since the last
    # pass are learned again from writer (0 disables; they are still learned on demand).
    object_types_refresh_s: float = Field(default=60.0, ge=0)
    # How long discovered HubSpot property definitions are trusted.
    property_cache_ttl_s: float = Field(default=300.0, ge=0)
    # How often the mappings directory is checked for changes (0 disables hot reload).
    reload_interval_s: float = Field(default=2.0, ge=0)
    # How long PushRecords remembers a request_id's answer.
    push_idempotency_ttl_s: int = Field(default=86_400, ge=1)
    # Approximate most entries kept per change-feed stream.
    feed_max_len: int = Field(default=1_000_000, ge=1000)
    # Check mapping targets against HubSpot's properties (through writer) at start-up and reload.
    validate_properties: bool = True
    # Portals checked; empty means a sample of the portals hubsync knows (hubsync:portals), at
    # most VALIDATE_MAX_PORTALS of them: a start-up check of every portal would keep a restarted
    # mapper from serving for minutes at 10,000 portals (one writer call each).
    validate_portal_ids: list[int] = Field(default_factory=list)
    validate_max_portals: int = Field(default=10, ge=0)
    # Run the inbound worker (event streams → change feed) in this process.
    inbound_enabled: bool = True
    # Internal services allowed to push records, subscribe to the change feed and use mappings.
    client_callers: list[str] = Field(default_factory=lambda: ["client"])
    # Most change-feed consumer groups (each one is a Redis consumer group per feed stream and a
    # metric label); Subscribe with one more new group gets RESOURCE_EXHAUSTED.
    max_consumer_groups: int = Field(default=64, ge=1, le=10_000)
    # Operators (people, through the CLI): list, validate and suggest mappings besides the
    # clients, and alone the inbound parked/dead-letter RPCs.
    admin_callers: list[str] = Field(default_factory=lambda: ["cli"])

    @classmethod
    def variable(cls, name: str) -> str:
        """Return the environment variable of setting ``name`` (``HUBSYNC_MAPPER_<NAME>``)."""
        return f"{cls.model_config.get('env_prefix', '')}{name}".upper()
