"""The mappings in force, and hot reload without losing in-flight work.

Readers take a snapshot (``registry.current``) at the start of a batch or call and use it to the
end; reload compiles and checks a complete new :class:`MappingSet` off to the side and swaps the
reference only when everything is valid, so in-flight work finishes with the mappings it began
with and a broken edit never replaces working mappings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from hubsync.core.errors import Unavailable
from hubsync.mapper.mappings import LoadedMapping, MappingError, directory_stamp, load_directory
from hubsync.mapper.properties import PropertyCatalog
from hubsync.mapper.transforms import MappingSet

__all__ = ["MappingRegistry"]

log = logging.getLogger(__name__)


class MappingRegistry:
    """Holds the current mappings of one directory."""

    def __init__(
        self,
        directory: Path,
        *,
        catalog: PropertyCatalog | None = None,
        check_portals: Callable[[], Awaitable[list[int]]] | None = None,
    ):
        self.directory = directory
        self.catalog = catalog
        self.check_portals = check_portals
        self.loaded: list[LoadedMapping] = []
        self.current: MappingSet = MappingSet([])
        self.generation = 0
        self.last_error: list[str] = []
        self._stamp: tuple[tuple[str, int, int], ...] = ()

    def snapshot(self) -> MappingSet:
        """Return the mappings in force."""
        return self.current

    async def load(self) -> None:
        """Loads (or reloads) the directory; raises MappingError and keeps the old mappings."""
        stamp = await asyncio.to_thread(directory_stamp, self.directory)
        loaded = await asyncio.to_thread(load_directory, self.directory)
        compiled = MappingSet(loaded)
        if self.catalog is not None and self.check_portals is not None:
            self.catalog.invalidate()
            errors: list[str] = []
            for portal in await self.check_portals():
                try:
                    errors += await self.catalog.check(portal, loaded)
                except Unavailable as exc:
                    # Writer or HubSpot not reachable: the files are valid; the targets could not be
                    # verified now (ValidateMapping can, later). Refusing to start would couple the
                    # mapper's availability to HubSpot's.
                    log.warning(
                        "mapping targets not verified", extra={"portal": portal, "error": exc.message}
                    )
            if errors:
                raise MappingError(errors)
        self.loaded, self.current, self._stamp = loaded, compiled, stamp
        self.generation += 1
        self.last_error = []
        log.info("mappings loaded", extra={"generation": self.generation, "types": sorted(compiled.by_type)})

    async def watch(self, interval_s: float) -> None:
        """Reloads when a file of the directory changes; a bad edit is logged, not applied."""
        while True:
            await asyncio.sleep(interval_s)
            stamp = await asyncio.to_thread(directory_stamp, self.directory)
            if stamp == self._stamp:
                continue
            try:
                await self.load()
            except MappingError as exc:
                self._stamp = stamp  # do not retry the same broken files every tick
                self.last_error = exc.errors
                log.error(
                    "mapping reload refused; keeping the previous mappings", extra={"errors": exc.errors}
                )
            except Exception as exc:
                log.error("mapping reload failed; keeping the previous mappings", extra={"error": str(exc)})
