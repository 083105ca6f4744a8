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

import zlib
from collections.abc import Iterable
from typing import Final

__all__ = [
    "AUTH_CONNECTIONS_KEY",
    "AUTH_NEEDS_REAUTH_KEY",
    "AUTH_REFRESHER_LOCK_KEY",
    "AUTH_REFRESH_DUE_BACKFILLED_KEY",
    "AUTH_REFRESH_DUE_KEY",
    "CONFIG_CHANGES_CHANNEL",
    "CONNECTION_CHANGES_CHANNEL",
    "FEED_GROUPS_KEY",
    "FEED_PUBLISHING_KEY",
    "INBOUND_DLQ_PORTALS_KEY",
    "INBOUND_PARKED_PORTALS_KEY",
    "PORTALS_KEY",
    "WRITER_DLQ_PORTALS_KEY",
    "WRITER_PORTALS_KEY",
    "ConfigEntry",
    "EchoEntry",
    "EventEntry",
    "FeedEntry",
    "auth_connection_key",
    "auth_refresh_failed_key",
    "auth_refresh_lock_key",
    "circuit_closed_key",
    "circuit_open_key",
    "circuit_probe_key",
    "config_history_key",
    "config_key",
    "dedupe_key",
    "echoes_key",
    "events_key",
    "feed_key",
    "feed_last_key",
    "feed_nudge_key",
    "feed_pending_key",
    "feed_ready_key",
    "feed_sweep_key",
    "feed_sweep_lock_key",
    "fingerprint_key",
    "inbound_dlq_key",
    "inbound_drain_lock_key",
    "inbound_failures_key",
    "inbound_park_key",
    "inbound_parked_key",
    "oauth_browser_key",
    "oauth_state_key",
    "portal_indexes",
    "portal_key",
    "portal_key_pattern",
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
    "tenant_config_history_key",
    "tenant_config_key",
    "tenant_portals_key",
    "write_ledger_key",
    "write_request_key",
    "writer_dlq_key",
    "writer_gdpr_audit_key",
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
#: Sorted set of feed publications in progress (``<portal>|<token>``, score: start ms): mapper's
#: publisher adds one before its transaction and removes it once every group is marked; an old
#: member is a publisher that died in between, and its portal is marked ready again.
FEED_PUBLISHING_KEY: Final = f"{PREFIX}:feed:publishing"
#: Sorted set of portal ids with a connection (score: the portal id), for paging: auth.
AUTH_CONNECTIONS_KEY: Final = f"{PREFIX}:auth:connections"
#: Sorted set of active OAuth connections by access-token expiry (score: ``expires_ms``), so the
#: refresher reads only the connections due: auth.
AUTH_REFRESH_DUE_KEY: Final = f"{PREFIX}:auth:refresh-due"
#: Set when the one-off fill of :data:`AUTH_REFRESH_DUE_KEY` from every connection has run
#: (upgrade from a release without it); value: when, Unix ms: auth.
AUTH_REFRESH_DUE_BACKFILLED_KEY: Final = f"{PREFIX}:auth:refresh-due:backfilled"
#: Set of portal ids whose connection needs a person to authorize again (the gauge's source): auth.
AUTH_NEEDS_REAUTH_KEY: Final = f"{PREFIX}:auth:needs-reauth"
#: Held by the auth replica running this interval's refresher pass (PX: the interval): auth.
AUTH_REFRESHER_LOCK_KEY: Final = f"{PREFIX}:auth:refresher-lock"
#: Pub/sub channel: auth publishes a portal id whenever its connection changes (connected,
#: re-authorized, refreshed, revoked); mapper re-checks a portal whose inbound events are parked.
CONNECTION_CHANGES_CHANNEL: Final = f"{PREFIX}:auth:connection-changes"
#: Pub/sub channel: mapper's ConfigService publishes ``<scope>|<kind>|<version>`` (scope
#: ``portal:<id>`` or ``tenant:<name>``) after storing a configuration version; every mapper and
#: writer replica drops what it cached for that scope.
CONFIG_CHANGES_CHANNEL: Final = f"{PREFIX}:config:changes"


def _feed_group_key(group: str, *parts: str) -> str:
    """``hubsync:{feed:<group>}:<parts>``: one change-feed consumer group's keys share a hash tag,
    so a script over them (take, mark) stays in one cluster slot."""
    return ":".join([PREFIX, f"{{feed:{group}}}", *parts])


def feed_ready_key(group: str, object_type: str) -> str:
    """Sorted set of portals whose feed stream of ``object_type`` may hold changes ``group`` has
    not read (score: due time, ms; a future score is a lease): mapper's publisher marks, the feed
    takes."""
    return _feed_group_key(group, "ready", object_type)


def feed_pending_key(group: str, object_type: str) -> str:
    """Sorted set of portals with changes delivered to ``group`` and maybe not acked (score: when
    to look for ones past their visibility timeout, ms): mapper's feed."""
    return _feed_group_key(group, "pending", object_type)


def feed_nudge_key(group: str) -> str:
    """List a subscriber of ``group`` blocks on (BLPOP) while nothing is ready; a mark that makes a
    portal ready pushes to it (capped): mapper."""
    return _feed_group_key(group, "nudge")


def feed_sweep_key(group: str) -> str:
    """Hash of the one-off pass that marks every known portal's retained changes for a new (or
    upgraded) ``group`` (``cursor``, ``done``): mapper's feed."""
    return _feed_group_key(group, "sweep")


def feed_sweep_lock_key(group: str) -> str:
    """Held (TTL) by the replica running ``group``'s sweep: mapper's feed."""
    return _feed_group_key(group, "sweep", "lock")


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


# ---- a tenant's keys (a named group of portals; hash tag ``{tenant:<name>}``) -------------------


def _tenant_key(tenant: str, *parts: str) -> str:
    return ":".join([PREFIX, f"{{tenant:{tenant}}}", *parts])


def tenant_config_key(tenant: str, kind: str) -> str:
    """Hash of the tenant's configuration version in force (version, document, author, at): mapper's
    ConfigService writes; mapper and writer read."""
    return _tenant_key(tenant, "config", kind)


def tenant_config_history_key(tenant: str, kind: str) -> str:
    """Stream of the tenant's stored configuration versions (capped): mapper's ConfigService."""
    return _tenant_key(tenant, "config", kind, "history")


def tenant_portals_key(tenant: str) -> str:
    """Set of the portals that joined the tenant (validation of its mappings): mapper."""
    return _tenant_key(tenant, "config", "portals")


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


def portal_key_pattern(portal_id: int | str) -> str:
    """The SCAN ``MATCH`` pattern of every key of one portal (they all share its slot)."""
    return portal_key(portal_id, "*")


#: The queues with ready sets (``hubsync.core.ready``): mapper's inbound events, writer's writes.
READY_QUEUES: Final = ("events", "writes")


def ready_shard(portal_id: int | str, shards: int) -> int:
    """The ready-set shard of ``portal_id`` among ``shards`` (CRC-32 of its decimal id)."""
    return zlib.crc32(str(portal_id).encode()) % shards


def portal_indexes(
    portal_id: int | str,
    ready_shards: int = 64,
    *,
    feed_groups: Iterable[str] = (),
    feed_types: Iterable[str] = (),
) -> tuple[str, ...]:
    """The keys of no portal that may hold ``portal_id`` as a member.

    Sets, sorted sets, or hash fields named by the portal id: what deleting a tenant must also
    remove it from. A new registry of portals is added here, or ``hubsync tenant delete`` leaves
    the portal in it. Sharded registries (the ready and pending sets, ``ready_shards`` shards: the
    ``HUBSYNC_READY_SHARDS`` setting) give the portal's own shard. The change feed's ready and
    pending sets are per subscriber group and object type: those of ``feed_groups`` (the members
    of :data:`FEED_GROUPS_KEY`) and ``feed_types`` (the types of the portal's feed streams).
    """
    shard = ready_shard(portal_id, ready_shards)
    ready = tuple(
        key for queue in READY_QUEUES for key in (ready_key(queue, shard), ready_pending_key(queue, shard))
    )
    types = sorted(set(feed_types))
    feed = tuple(
        key
        for group in sorted(set(feed_groups))
        for t in types
        for key in (feed_ready_key(group, t), feed_pending_key(group, t))
    )
    return (
        PORTALS_KEY,
        WRITER_PORTALS_KEY,
        INBOUND_PARKED_PORTALS_KEY,
        WRITER_DLQ_PORTALS_KEY,
        INBOUND_DLQ_PORTALS_KEY,
        AUTH_CONNECTIONS_KEY,
        AUTH_REFRESH_DUE_KEY,
        AUTH_NEEDS_REAUTH_KEY,
        *ready,
        *feed,
    )


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


def writer_gdpr_audit_key(portal_id: int | str) -> str:
    """Stream auditing every GDPR delete writer sent (no personal data: a digest of the id): writer."""
    return portal_key(portal_id, "writer", "gdpr")


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


def config_key(portal_id: int | str, kind: str) -> str:
    """Hash of the portal's configuration version in force (version, document, author, at):
    mapper's ConfigService writes; mapper and writer read."""
    return portal_key(portal_id, "config", kind)


def config_history_key(portal_id: int | str, kind: str) -> str:
    """Stream of the portal's stored configuration versions (capped): mapper's ConfigService."""
    return portal_key(portal_id, "config", kind, "history")


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
    """Fields of an entry on :func:`events_key` (ingress's committer, journal replay and reconciler,
    and mapper's dead-letter replay write them; mapper, the journal and the reconciler read them,
    always through :func:`hubsync.core.event_entries.decode_entry`).

    Since the release after 0.1.0 an entry is one field, :attr:`ENTRY`; the others are the format
    of 0.1.0, still read (entries already in Redis when an install upgrades, or written with
    ``HUBSYNC_INGRESS_JOURNAL_FORMAT=fields``), and ``origin`` may sit next to :attr:`ENTRY` on a
    copy sent back to the stream (it overrides the encoded origin)."""

    ENTRY: Final = "e"  #: a serialized ``hubsync.api.internal.v1.JournalEvent``
    EVENT: Final = "event"  #: 0.1.0's format: the webhook event's JSON text
    TRACEPARENT: Final = "traceparent"  #: 0.1.0's format: W3C trace context (optional)
    TRACESTATE: Final = "tracestate"  #: 0.1.0's format: W3C trace state (optional)
    ACCEPTED_MS: Final = "accepted_ms"  #: 0.1.0's format: when ingress accepted it, Unix ms
    ORIGIN: Final = "origin"  #: webhook, reconcile, replay or inbound-dlq-replay
    REPLAY_OF: Final = "replay_of"  #: 0.1.0's format, on a journal replay's copy: the entry copied
    #: The fields that travel with an entry copied into mapper's parked and dead-letter streams.
    COPIED: Final = (ENTRY, EVENT, TRACEPARENT, TRACESTATE, ACCEPTED_MS, ORIGIN)


class EchoEntry:
    """Fields of an entry on :func:`echoes_key`: ingress writes, its reconciler reads."""

    RECORD: Final = "r"  #: ``<object type>:<object id>:<occurredAt>``


class FeedEntry:
    """Fields of an entry on :func:`feed_key`: mapper publishes, its feed delivers."""

    CHANGE: Final = "change"  #: a serialized ``RecordChange``
    HUBSPOT_ID: Final = "hs"  #: the record's HubSpot id


class ConfigEntry:
    """Fields of a configuration version: the hash of :func:`config_key` /
    :func:`tenant_config_key` and each entry of their history streams (mapper's ConfigService
    writes; mapper and writer read)."""

    VERSION: Final = "version"  #: 1, 2, 3 ... per scope and kind
    DOCUMENT: Final = "document"  #: a serialized ``hubsync.api.common.v1.ConfigDocument``
    AUTHOR: Final = "author"  #: the caller name that stored it (never a credential)
    AT_MS: Final = "at"  #: when it was stored, Unix ms (Redis's clock)
    RESTORED: Final = "restored"  #: a rollback's source version (0: none)
