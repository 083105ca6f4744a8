"""Hot reload: a valid edit takes effect, a broken edit is refused, in-flight snapshots stay."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from hubsync.mapper.registry import MappingRegistry

HEAD = "object_type: deals\nid: {external: id, hubspot: external_id}\n"
V1 = HEAD + "fields: [{hubspot: dealname, external: name}]\n"
V2 = HEAD + "fields: [{hubspot: dealname, external: title}]\n"


def _touch(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


async def _wait_for(predicate, timeout: float = 3.0) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_reload_applies_valid_edits_and_refuses_broken_ones(tmp_path: Path) -> None:
    file = tmp_path / "deals.yaml"
    file.write_text(V1)
    registry = MappingRegistry(tmp_path)
    await registry.load()
    in_flight = registry.snapshot()
    watcher = asyncio.create_task(registry.watch(0.02))
    try:
        _touch(file, V2, 1)
        assert await _wait_for(lambda: registry.generation == 2)
        deals = registry.snapshot().get("deals")
        assert deals is not None and deals.to_external({"dealname": "X"})[1] == {"title": "X"}
        # Work that began before the reload finishes with the mappings it started with.
        old = in_flight.get("deals")
        assert old is not None and old.to_external({"dealname": "X"})[1] == {"name": "X"}

        _touch(file, "object_type: deals\nfields: []\n", 2)
        assert await _wait_for(lambda: bool(registry.last_error))
        assert registry.generation == 2
        assert any(str(file) in e for e in registry.last_error)
        still = registry.snapshot().get("deals")
        assert still is not None and still.to_external({"dealname": "X"})[1] == {"title": "X"}
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
