"""Validation, backoff, circuit breaker, export checkpoints, settings presets."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from hubsync.api.writer.v1 import writer_pb2
from hubsync.core.errors import InvalidArgument, Unavailable
from hubsync.writer.circuit import CircuitBreaker, CircuitState
from hubsync.writer.export import decode_checkpoint, encode_checkpoint
from hubsync.writer.hubspot_client import RetryPolicy
from hubsync.writer.settings import AppType, RateLimitPreset, WriterSettings
from hubsync.writer.submissions import validate


def test_validate_names_every_bad_field() -> None:
    writes = [
        writer_pb2.Write(
            record=writer_pb2.RecordWrite(operation=writer_pb2.WRITE_OPERATION_UPSERT, object_type="x")
        ),
        writer_pb2.Write(),
        writer_pb2.Write(
            association=writer_pb2.AssociationWrite(
                from_object_type="contacts", from_id="abc", to_object_type="companies", to_id="2"
            )
        ),
    ]
    with pytest.raises(InvalidArgument) as err:
        validate(writes)
    v = err.value.violations
    assert {"writes[0].record.object_type", "writes[0].record.id", "writes[0].record.id_property"} <= set(v)
    assert "writes[1]" in v and "writes[2].association.from_id" in v


def test_validate_accepts_good_writes() -> None:
    validate(
        [
            writer_pb2.Write(
                record=writer_pb2.RecordWrite(
                    operation=writer_pb2.WRITE_OPERATION_UPDATE,
                    object_type="deals",
                    id="12",
                    properties={"a": "b"},
                )
            )
        ]
    )


@given(st.integers(min_value=0, max_value=20))
def test_full_jitter_stays_within_the_cap(attempt: int) -> None:
    policy = RetryPolicy(base_s=0.5, max_s=30)
    wait = policy.backoff(attempt)
    assert 0 <= wait <= min(30, 0.5 * 2**attempt)


async def test_circuit_opens_fails_fast_then_probes() -> None:
    breaker = CircuitBreaker(1, threshold=2, open_s=0.05)
    assert await breaker.admit() is False
    await breaker.record(False, False)
    await breaker.record(False, False)
    assert breaker.state == CircuitState.OPEN
    with pytest.raises(Unavailable):
        await breaker.admit()
    time.sleep(0.06)
    assert breaker.state == CircuitState.HALF_OPEN
    assert await breaker.admit() is True  # the probe
    with pytest.raises(Unavailable):
        await breaker.admit()  # only one probe at a time
    await breaker.record(True, True)
    assert breaker.state == CircuitState.CLOSED


def test_checkpoints_round_trip_and_garbage_is_invalid_argument() -> None:
    state = {"v": 1, "last_id": 42, "after": None, "before": None, "exported": 3, "total": 9}
    assert decode_checkpoint(encode_checkpoint(state)) == state
    with pytest.raises(InvalidArgument):
        decode_checkpoint("not-a-checkpoint")


def test_presets_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WriterSettings().limits() == (110, 0)
    assert WriterSettings(app_type=AppType.PRIVATE).limits() == (100, 250_000)
    assert WriterSettings(rate_limit_preset=RateLimitPreset.PROFESSIONAL).limits() == (190, 625_000)
    monkeypatch.setenv("HUBSYNC_WRITER_RATE_LIMIT_PRESET", "enterprise")
    monkeypatch.setenv("HUBSYNC_WRITER_BURST_LIMIT", "150")
    assert WriterSettings().limits() == (150, 1_000_000)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATE_LIMIT_PRESET", "unlimited"),
        ("DAILY_RESET_TIMEZONE", "Mars/Olympus_Mons"),
        ("DAILY_RESET_TIMEZONE", ""),
    ],
)
def test_a_bad_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    from hubsync.core.settings import load_settings

    monkeypatch.setenv(f"HUBSYNC_WRITER_{name}", value)
    with pytest.raises(SystemExit) as exc:
        load_settings(WriterSettings)
    assert exc.value.code == 2
    assert f"HUBSYNC_WRITER_{name}" in capsys.readouterr().err


def test_the_daily_reset_zone_is_utc_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUBSYNC_WRITER_DAILY_RESET_TIMEZONE", raising=False)
    assert str(WriterSettings().reset_zone()) == "UTC"
    monkeypatch.setenv("HUBSYNC_WRITER_DAILY_RESET_TIMEZONE", "America/New_York")
    assert str(WriterSettings().reset_zone()) == "America/New_York"


def test_the_daily_reset_zone_may_be_a_fixed_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    for value, offset in (("UTC+05:30", 19_800), ("UTC-03:00", -10_800), ("UTC+00:01:02", 62)):
        monkeypatch.setenv("HUBSYNC_WRITER_DAILY_RESET_TIMEZONE", value)
        zone = WriterSettings().reset_zone()
        assert zone.utcoffset(at) == timedelta(seconds=offset)
    for bad in ("UTC+24:00", "UTC+05:60", "+05:30", "UTC+5"):
        with pytest.raises(ValidationError):
            WriterSettings(daily_reset_timezone=bad)
