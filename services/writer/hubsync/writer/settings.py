"""The writer's settings (``HUBSYNC_WRITER_*``)."""

from __future__ import annotations

import re
from datetime import timedelta, timezone, tzinfo
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "PRESETS",
    "AppType",
    "RateLimitPreset",
    "WriterSettings",
]

# A fixed offset from UTC ("UTC+05:30", "UTC-03:00", to the second: "UTC+01:02:03").
_FIXED_OFFSET = re.compile(r"UTC([+-])(\d{2}):(\d{2})(?::(\d{2}))?")


def _fixed_offset(value: str) -> timezone | None:
    """The fixed-offset zone ``value`` names, or None when it names none."""
    match = _FIXED_OFFSET.fullmatch(value)
    if match is None:
        return None
    sign, hours, minutes, seconds = match.groups()
    offset = timedelta(hours=int(hours), minutes=int(minutes), seconds=int(seconds or 0))
    if int(minutes) > 59 or int(seconds or 0) > 59 or offset >= timedelta(hours=24):
        return None
    return timezone(-offset if sign == "-" else offset)


class RateLimitPreset(StrEnum):
    """HubSpot's published limits (reference §5): requests per 10 s and per day."""

    PUBLIC_APP = "public_app"
    FREE_STARTER = "free_starter"
    PROFESSIONAL = "professional"
    ENTERPRISE = "enterprise"
    LIMIT_INCREASE = "limit_increase"


# (burst per 10 s, daily; 0 = no daily budget known to us: OAuth apps get the account's cap).
PRESETS: dict[RateLimitPreset, tuple[int, int]] = {
    RateLimitPreset.PUBLIC_APP: (110, 0),
    RateLimitPreset.FREE_STARTER: (100, 250_000),
    RateLimitPreset.PROFESSIONAL: (190, 625_000),
    RateLimitPreset.ENTERPRISE: (190, 1_000_000),
    RateLimitPreset.LIMIT_INCREASE: (250, 1_000_000),
}


class AppType(StrEnum):
    """How hubsync is connected to HubSpot (it decides the default preset)."""

    OAUTH = "oauth"
    PRIVATE = "private"


class WriterSettings(BaseSettings):
    """Values only the writer reads."""

    model_config = SettingsConfigDict(env_prefix="HUBSYNC_WRITER_", extra="ignore")

    # Run on uvloop (shipped with uvicorn[standard]): less CPU per HubSpot call, most of which is
    # socket and event-loop work. Read by ``__main__`` only, before the loop starts.
    uvloop: bool = True
    # Unset: public_app for an OAuth app, free_starter (the safest private-app plan) otherwise.
    rate_limit_preset: RateLimitPreset | None = None
    # Override the preset's requests per burst window / per day (0 = no daily budget).
    burst_limit: int | None = Field(default=None, ge=1)
    daily_limit: int | None = Field(default=None, ge=0)
    burst_window_ms: int = Field(default=10_000, ge=100)
    # HubSpot resets the daily limit at midnight in the account's time zone (an IANA name such as
    # America/New_York, or a fixed offset such as UTC+05:30): when the daily budget restarts, and
    # until when a DAILY 429 stops sends.
    daily_reset_timezone: str = "UTC"
    # Added to the window. A slot is re-stamped when the response comes back (never earlier than
    # HubSpot's arrival time), so this only covers requests still in flight a whole window later.
    burst_window_margin_ms: int = Field(default=100, ge=0)
    search_per_second: int = Field(default=5, ge=1)
    # How long a write waits for others to fill its batch.
    batch_max_wait_ms: int = Field(default=50, ge=0)
    batch_max_size: int = Field(default=100, ge=1, le=100)
    # When the portal's window is saturated (a slot had to be waited for), a partial batch gives
    # its slot back and keeps filling while its key's writes keep arriving (it goes this long
    # after the last one): quota, not latency, is the bottleneck then, and every call should
    # carry a full batch.
    batch_max_wait_saturated_ms: int = Field(default=1000, ge=0)
    # ... but a saturated partial batch fills at most this long since it opened.
    batch_max_hold_saturated_ms: int = Field(default=10_000, ge=0)
    # The window counts as saturated once this fraction of its budget is used (or a slot had to
    # be waited for): below it partial batches go at once (low latency), above it they fill.
    batch_fill_above: float = Field(default=0.25, ge=0, le=1)
    # Log the writes that would be made (with their diff); send none.
    pilot_mode: bool = False
    app_type: AppType = AppType.OAUTH
    # Retries of 423/429/5xx/timeouts per HubSpot call, and the backoff's base and cap.
    max_attempts: int = Field(default=6, ge=1)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    # Circuit breaker per portal: consecutive failures that open it, and how long it stays open.
    circuit_failure_threshold: int = Field(default=5, ge=1)
    circuit_open_s: float = Field(default=30.0, ge=0)
    http_timeout_s: float = Field(default=30.0, gt=0)
    # Under a caller's gRPC deadline (reads, search), one HubSpot call may take at most this share
    # of the time left, so a hung call is cut while the split-and-retry still fits the deadline.
    http_deadline_share: float = Field(default=0.4, gt=0, le=1)
    # batch/read calls (100 ids each) one ReadRecords has out at once.
    read_concurrency: int = Field(default=8, ge=1)
    # hubsync's source tag: written with each write as objectWriteTraceId "<tag>:<id>", and, when
    # source_property is set, as that property's value. UNSURE how HubSpot exposes an app's
    # identity on webhooks (changeSource INTEGRATION + sourceId is what the sandbox sends), so
    # the property is optional and off by default.
    source_tag: str = "hubsync"
    source_property: str = ""
    # Durable queue: most entries of one portal per turn (then the portal goes to the back of the
    # line), how long an entry may stay pending before another consumer reclaims it (XAUTOCLAIM),
    # portals processed at once, and the stream's approximate max length.
    queue_read_count: int = Field(default=100, ge=1)
    queue_claim_idle_ms: int = Field(default=30_000, ge=10)
    queue_max_turns: int = Field(default=16, ge=1, le=1024)
    queue_maxlen: int = Field(default=1_000_000, ge=100)
    # Run the durable-queue consumer in this process.
    consume_queue: bool = True
    # Idempotency records of SubmitWrites (request_id) live this long.
    request_ttl_s: int = Field(default=86_400, ge=1)
    # Written-values records (ingress's echo check) live this long.
    written_ttl_s: int = Field(default=3_600, ge=1)
    # Per-record order: how long the highest version written to each property of a record is
    # remembered (an older write arriving later than this is no longer recognised as older). It
    # costs about 200 bytes of Redis per record written in that time; reclaims and retries come
    # within minutes, a day also covers most dead-letter replays.
    version_ttl_s: int = Field(default=86_400, ge=60)
    # Skip writes whose properties equal what writer last wrote (WRITE_STATUS_UNCHANGED).
    skip_unchanged: bool = False
    # Export: wait this long at the end for search's index lag, then look once more.
    export_lookback_s: float = Field(default=2.0, ge=0)
    # Callers allowed to replay/purge the DLQ.
    admin_callers: list[str] = ["cli"]
    # Internal services allowed to read HubSpot records through the writer (ReadRecords,
    # SearchRecords, ListProperties, ExportRecords); they write through the mapper.
    client_callers: list[str] = ["client"]

    @field_validator("daily_reset_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if _fixed_offset(value) is not None:
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                "must be an IANA time zone name (America/New_York) or a fixed offset (UTC+05:30)"
            ) from None
        return value

    def reset_zone(self) -> tzinfo:
        """Return the zone the daily budget restarts at midnight in."""
        return _fixed_offset(self.daily_reset_timezone) or ZoneInfo(self.daily_reset_timezone)

    def explicit_limits(self) -> tuple[bool, bool]:
        """Return whether BURST_LIMIT / DAILY_LIMIT were set.

        They cap what HubSpot's headers allow (a preset only stands in until HubSpot has told
        the portal's limits).
        """
        return self.burst_limit is not None, self.daily_limit is not None

    def limits(self) -> tuple[int, int]:
        """(burst, daily) after overrides."""
        preset = self.rate_limit_preset or (
            RateLimitPreset.PUBLIC_APP if self.app_type == AppType.OAUTH else RateLimitPreset.FREE_STARTER
        )
        burst, daily = PRESETS[preset]
        if self.burst_limit is not None:
            burst = self.burst_limit
        if self.daily_limit is not None:
            daily = self.daily_limit
        return burst, daily
