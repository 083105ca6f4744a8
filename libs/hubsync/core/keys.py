"""The Redis contract: every key, channel and shared stream-entry field hubsync uses, named once.

Services build keys only through this module (a unit test fails on a ``hubsync:`` key written as
a string literal anywhere else under ``libs/`` or ``services/``), and the table in
``docs/design/tenancy.md`` lists every pattern here (a unit test checks the two agree).

A portal's keys are ``hubsync:{<portal>}:...``: the hash tag puts all of them in one Redis Cluster
slot, so a script or transaction over one portal's keys never crosses slots. Keys of no portal
(the registries of known portals, OAuth state) start ``hubsync:<area>:``.

The strings are part of the stored data: changing one orphans what existing installs hold, so a
change here needs a migration (see the design doc's migration plan).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AUTH_CONNECTIONS_KEY",
    "CONNECTION_CHANGES_CHANNEL",
    "FEED_GROUPS_KEY",
    "INBOUND_DLQ_PORTALS_KEY",
    "INBOUND_PARKED_PORTALS_KEY",
    "PORTALS_KEY",
    "WRITER_DLQ_PORTALS_KEY",
    "WRITER_PORTALS_KEY",
    "EchoEntry",
    "EventEntry",
    "FeedEntry",
    "auth_connection_key",
    "auth_refresh_failed_key",
    "auth_refresh_lock_key",
    "circuit_closed_key",
    "circuit_open_key",
    "circuit_probe_key",
    "dedupe_key",
    "echoes_key",
    "events_key",
    "feed_key",
    "feed_last_key",
    "fingerprint_key",
    "inbound_dlq_key",
    "inbound_drain_lock_key",
    "inbound_failures_key",
    "inbound_park_key",
    "inbound_parked_key",
    "oauth_browser_key",
    "oauth_state_key",
    "portal_key",
    "push_done_key",
    "push_lock_key",
    "push_version_key",
    "rate_daily_key",
    "rate_info_key",
    "rate_learned_key",
    "rate_probe_key",
    "rate_window_key",
    "ready_channel",
    "ready_consumers_key",
    "ready_key",
    "ready_lease_key",
    "ready_pending_key",
    "ready_sweep_lease_key",
    "ready_swept_key",
    "reconcile_key",
    "replays_key",
    "write_ledger_key",
    "write_request_key",
    "writer_dlq_key",
    "writer_ids_key",
    "writer_version_key",
    "writer_versions_key",
    "writes_key",
    "written_key",
]

PREFIX: Final = "hubsync"

# ---- keys of no portal ---------------------------------------------------------------------------

#: Set of portal ids that ever sent events: ingress adds, mapper (inbound, feed) and the
#: reconciler read it.
PORTALS_KEY: Final = f"{PREFIX}:portals"
#: Set of portal ids with a write queue: writer adds when it first queues for a portal.
WRITER_PORTALS_KEY: Final = f"{PREFIX}:writer:portals"
#: Set of portals whose inbound events are parked (no usable connection): mapper.
INBOUND_PARKED_PORTALS_KEY: Final = f"{PREFIX}:inbound:parked"
#: Set of change-feed consumer group names admitted (bounded count): mapper's feed.
FEED_GROUPS_KEY: Final = f"{PREFIX}:feed:groups"
#: Sorted set of portal ids with a connection (score: the portal id), for paging: auth.
AUTH_CONNECTIONS_KEY: Final = f"{PREFIX}:auth:connections"
#: Pub/sub channel: auth publishes a portal id whenever its connection changes (connected,
#: re-authorized, refreshed, revoked); mapper re-checks a portal whose inbound events are parked.
CONNECTION_CHANGES_CHANNEL: Final = f"{PREFIX}:auth:connection-changes"


#: Set of portals with writer dead letters (writer adds when it dead-letters; its depth gauge
#: drops members whose dead-letter stream is empty).
WRITER_DLQ_PORTALS_KEY: Final = f"{PREFIX}:writer:dlq-portals"
#: Set of portals with inbound dead letters (mapper adds when it dead-letters; its depth gauge
#: drops members whose dead-letter stream is empty): the gauge never walks every known portal.
INBOUND_DLQ_PORTALS_KEY: Final = f"{PREFIX}:inbound:dlq-portals"


def oauth_state_key(digest: str) -> str:
    """A pending OAuth authorization, by the digest of its ``state`` (one use, TTL): auth."""
    return f"{PREFIX}:auth:oauth-state:{digest}"


def oauth_browser_key(digest: str) -> str:
    """The browser binding of a pending authorization, by digest (TTL): auth."""
    return f"{PREFIX}:auth:oauth-browser:{digest}"


# ---- ready sets: which portals have work (hubsync.core.ready) ----------------------------------
# A queue (``events``: mapper's inbound, ``writes``: writer's durable queue) has S shards; a shard's
# keys share the hash tag ``{ready:<queue>:<shard>}`` so a script over one shard stays in one slot.


def ready_key(queue: str, shard: int | str) -> str:
    """Sorted set of portals with work on ``queue`` in one shard, scored by when they are due (ms):
    producers add (NX) after appending, the shard's lease holder takes turns and removes."""
    return f"{PREFIX}:{{ready:{queue}:{shard}}}"


def ready_lease_key(queue: str, shard: int | str) -> str:
    """The replica consuming one shard of ``queue`` (its owner id, PX TTL, renewed)."""
    return f"{ready_key(queue, shard)}:lease"


def ready_pending_key(queue: str, shard: int | str) -> str:
    """Sorted set of portals of one shard with entries delivered and maybe not acknowledged,
    scored by when to look for entries a dead consumer left (XAUTOCLAIM)."""
    return f"{ready_key(queue, shard)}:pending"


def ready_channel(queue: str) -> str:
    """Pub/sub channel: a producer publishes the shard number when a portal became newly ready."""
    return f"{PREFIX}:ready:{queue}"


def ready_consumers_key(queue: str) -> str:
    """Sorted set of live consumers of ``queue`` (score: heartbeat expiry, ms): leases balance."""
    return f"{PREFIX}:ready:{queue}:consumers"


def ready_sweep_lease_key(queue: str) -> str:
    """The replica running the sweep of ``queue`` (owner id, PX TTL)."""
    return f"{PREFIX}:ready:{queue}:sweep"


def ready_swept_key(queue: str) -> str:
    """When the last complete sweep of ``queue`` ended (Unix ms)."""
    return f"{PREFIX}:ready:{queue}:swept"


# ---- a portal's keys -----------------------------------------------------------------------------


def portal_key(portal_id: int | str, *parts: str) -> str:
    """``hubsync:{<portal>}:<parts>``: the hash tag keeps a portal's keys in one cluster slot.
    Services use the named functions below; this is the one place the layout is spelled."""
    return ":".join([PREFIX, f"{{{portal_id}}}", *parts])


def events_key(portal_id: int | str) -> str:
    """Stream of accepted webhook and reconciler events (entries: :class:`EventEntry`), also the
    journal replays read: ingress appends, mapper consumes (group ``mapper``)."""
    return portal_key(portal_id, "events")


def echoes_key(portal_id: int | str) -> str:
    """Stream of events recognised as hubsync's own writes (entries: :class:`EchoEntry`): ingress."""
    return portal_key(portal_id, "echoes")


def dedupe_key(portal_id: int | str, hour: int | str, bucket: int | str) -> str:
    """Set of event digests seen in one hour of ``occurredAt``, one of N buckets: ingress dedupe."""
    return portal_key(portal_id, "seen", str(hour), str(bucket))


def written_key(portal_id: int | str, object_type: str, hubspot_id: str) -> str:
    """Hash of what writer last wrote to a record (property -> value, TTL): written by writer after
    HubSpot took the write, read by ingress and mapper to recognise hubsync's own values."""
    return portal_key(portal_id, "written", object_type, hubspot_id)


def replays_key(portal_id: int | str, request_id: str) -> str:
    """Marker of a journal replay request already done (TTL): ingress journal."""
    return portal_key(portal_id, "replays", request_id)


def reconcile_key(portal_id: int | str, object_type: str) -> str:
    """Where the reconciler's last pass over an object type ended: ingress reconciler."""
    return portal_key(portal_id, "reconcile", object_type)


def feed_key(portal_id: int | str, object_type: str) -> str:
    """Stream of mapped changes for subscribers (entries: :class:`FeedEntry`): mapper."""
    return portal_key(portal_id, "feed", object_type)


def feed_last_key(portal_id: int | str, object_type: str, object_id: str) -> str:
    """The last change published to the feed for a record (to skip repeats): mapper."""
    return portal_key(portal_id, "feedlast", object_type, object_id)


def fingerprint_key(portal_id: int | str, object_type: str, external_id: str) -> str:
    """Hash of property -> digest of the last value seen or written for a record: mapper."""
    return portal_key(portal_id, "fp", object_type, external_id)


def push_done_key(portal_id: int | str, request_digest: str) -> str:
    """Marker of an outbound push request already handled, by request-id digest: mapper."""
    return portal_key(portal_id, "push", request_digest)


def push_lock_key(portal_id: int | str, request_digest: str) -> str:
    """Held while an outbound push request runs (a concurrent retry waits): mapper."""
    return portal_key(portal_id, "push", request_digest, "run")


def push_version_key(portal_id: int | str) -> str:
    """Counter reserving versions for outbound pushes: mapper outbound."""
    return portal_key(portal_id, "push", "version")


def inbound_parked_key(portal_id: int | str) -> str:
    """Stream of inbound events parked while the portal has no usable connection: mapper."""
    return portal_key(portal_id, "inbound", "parked")


def inbound_park_key(portal_id: int | str) -> str:
    """Hash describing why and since when the portal's inbound events are parked: mapper."""
    return portal_key(portal_id, "inbound", "park")


def inbound_dlq_key(portal_id: int | str) -> str:
    """Stream of inbound events that failed for good (dead letters): mapper."""
    return portal_key(portal_id, "inbound", "dlq")


def inbound_failures_key(portal_id: int | str) -> str:
    """Hash of failure counts of inbound events by entry id: mapper."""
    return portal_key(portal_id, "inbound", "failures")


def inbound_drain_lock_key(portal_id: int | str) -> str:
    """Lock held by the replica replaying the portal's parked events: mapper."""
    return portal_key(portal_id, "inbound", "drain-lock")


def writes_key(portal_id: int | str) -> str:
    """Stream of queued write submissions (writer's own entry format): writer (group ``writer``)."""
    return portal_key(portal_id, "writes")


def write_ledger_key(portal_id: int | str, entry_id: str) -> str:
    """Hash of what earlier attempts of one queued entry finished: writer."""
    return portal_key(portal_id, "writes", "ledger", entry_id)


def write_request_key(portal_id: int | str, request_id: str) -> str:
    """The answer to a submission, by request id (a repeat gets the first answer; TTL): writer."""
    return portal_key(portal_id, "writer", "request", request_id)


def writer_ids_key(portal_id: int | str, object_type: str, id_property: str, value: str) -> str:
    """HubSpot id of a record found by a unique property value (cache): writer."""
    return portal_key(portal_id, "writer", "ids", object_type, id_property, value)


def writer_version_key(portal_id: int | str) -> str:
    """Counter of write versions reserved when entries are queued: writer."""
    return portal_key(portal_id, "writer", "version")


def writer_versions_key(portal_id: int | str, object_type: str, id_property: str, record_id: str) -> str:
    """Hash of the newest version written to each property of a record (older ones are dropped)."""
    return portal_key(portal_id, "writer", "versions", object_type, id_property, record_id)


def writer_dlq_key(portal_id: int | str) -> str:
    """Stream of writes that failed for good (dead letters): writer."""
    return portal_key(portal_id, "dlq")


def rate_window_key(portal_id: int | str, budget: str) -> str:
    """Sorted set of calls in the sliding window of one rate budget: writer's rate limiter."""
    return portal_key(portal_id, "rl", budget)


def rate_daily_key(portal_id: int | str) -> str:
    """Hash counting the portal's calls of the current HubSpot day: writer's rate limiter."""
    return portal_key(portal_id, "rl", "daily")


def rate_info_key(portal_id: int | str, *, search: bool = False) -> str:
    """Hash of what HubSpot's last rate-limit headers said (and a DAILY block's end): writer."""
    return portal_key(portal_id, "rl", "info", "search") if search else portal_key(portal_id, "rl", "info")


def rate_learned_key(portal_id: int | str, *, search: bool = False) -> str:
    """Hash of the limits learned from HubSpot's headers (search: never written): writer."""
    if search:
        return portal_key(portal_id, "rl", "learned", "search")
    return portal_key(portal_id, "rl", "learned")


def rate_probe_key(portal_id: int | str) -> str:
    """The single call probing a possibly raised limit: writer's rate limiter."""
    return portal_key(portal_id, "rl", "probe")


def circuit_open_key(portal_id: int | str) -> str:
    """Set while the portal's circuit to HubSpot is open (TTL): writer."""
    return portal_key(portal_id, "circuit", "open")


def circuit_closed_key(portal_id: int | str) -> str:
    """Set for a while after a probe closed the circuit: tells replicas holding an old "open": writer."""
    return portal_key(portal_id, "circuit", "open", "closed")


def circuit_probe_key(portal_id: int | str) -> str:
    """The single call probing whether an open circuit may close: writer."""
    return portal_key(portal_id, "circuit", "probe")


def auth_connection_key(portal_id: int | str) -> str:
    """Hash of the portal's connection (kind, state, sealed tokens, expiry, generation): auth."""
    return portal_key(portal_id, "auth", "connection")


def auth_refresh_lock_key(portal_id: int | str) -> str:
    """Lock held by the replica refreshing the portal's OAuth token: auth."""
    return portal_key(portal_id, "auth", "refresh-lock")


def auth_refresh_failed_key(portal_id: int | str) -> str:
    """The generation whose refresh just failed transiently (short TTL): auth."""
    return portal_key(portal_id, "auth", "refresh-failed")


# ---- stream-entry fields shared between services -------------------------------------------------


class EventEntry:
    """Fields of an entry on :func:`events_key` (ingress's committer and reconciler, and mapper's
    dead-letter replay write them; mapper, the journal and the reconciler read them)."""

    EVENT: Final = "event"  #: the webhook event's JSON text
    TRACEPARENT: Final = "traceparent"  #: W3C trace context of the accepting request (optional)
    TRACESTATE: Final = "tracestate"  #: W3C trace state (optional)
    ACCEPTED_MS: Final = "accepted_ms"  #: when ingress accepted it, Unix ms
    ORIGIN: Final = "origin"  #: webhook, reconcile, replay or inbound-dlq-replay
    REPLAY_OF: Final = "replay_of"  #: on a journal replay's copy: the id of the entry copied
    #: The fields that travel with an entry copied into mapper's parked and dead-letter streams.
    COPIED: Final = (EVENT, TRACEPARENT, TRACESTATE, ACCEPTED_MS, ORIGIN)


class EchoEntry:
    """Fields of an entry on :func:`echoes_key`: ingress writes, its reconciler reads."""

    RECORD: Final = "r"  #: ``<object type>:<object id>:<occurredAt>``


class FeedEntry:
    """Fields of an entry on :func:`feed_key`: mapper publishes, its feed delivers."""

    CHANGE: Final = "change"  #: a serialized ``RecordChange``
    HUBSPOT_ID: Final = "hs"  #: the record's HubSpot id
