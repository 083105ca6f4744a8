"""The mappings in force for one portal: the default set (files) overlaid by the tenant's and
then the portal's override, each override replacing whole object types.

A portal without overrides gets the default :class:`MappingSet` itself (nothing compiled). A
combination with overrides is compiled once per (default generation, tenant, tenant version,
portal version) and kept in a small LRU, so a batch costs one cached lookup; a new version or a
reload of the files makes a new combination.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from hubsync.api.common.v1 import config_pb2
from hubsync.core.portal_config import EffectiveConfig, PortalConfigCache
from hubsync.mapper.mappings import LoadedMapping, MappingError, parse_mappings
from hubsync.mapper.registry import MappingRegistry
from hubsync.mapper.transforms import MappingSet

__all__ = ["MAPPINGS", "PortalMappings", "parse_override"]

log = logging.getLogger(__name__)

MAPPINGS = "mappings"
_Key = tuple[int, str, int, int]


def parse_override(layer: str, config: config_pb2.MappingsConfig) -> list[LoadedMapping]:
    """The mappings of an override document; raises :class:`MappingError` naming each problem as
    ``<layer>/<file>:<line>: <path>: <what is wrong>``."""
    loaded: list[LoadedMapping] = []
    errors: list[str] = []
    by_type: dict[str, str] = {}
    if not config.files:
        errors.append(f"{layer}: files: at least one mapping file is required (clear the override instead)")
    for i, f in enumerate(config.files):
        source = f"{layer}/{f.name or f'files[{i}]'}"
        try:
            for mapping in parse_mappings(f.yaml, source):
                if mapping.object_type in by_type:
                    errors.append(
                        f"{source}: object_type: {mapping.object_type} is already mapped in "
                        f"{by_type[mapping.object_type]}"
                    )
                    continue
                by_type[mapping.object_type] = source
                loaded.append(LoadedMapping(mapping, source))
        except MappingError as exc:
            errors.extend(exc.errors)
    if errors:
        raise MappingError(errors)
    return loaded


class PortalMappings:
    """Resolves the :class:`MappingSet` of a portal through the replica's config cache."""

    def __init__(self, registry: MappingRegistry, configs: PortalConfigCache, *, max_sets: int = 256) -> None:
        self.registry = registry
        self.configs = configs
        self.max_sets = max_sets
        self._sets: OrderedDict[_Key, MappingSet] = OrderedDict()

    async def for_portal(self, portal_id: int | str) -> MappingSet:
        """The mappings in force for the portal now (a snapshot: use it to the end of the batch)."""
        portal = int(portal_id)
        base = self.registry.snapshot()
        if portal <= 0:
            return base
        effective = await self.configs.get(portal)
        if not effective.layers(MAPPINGS):
            return base
        tenant_version, portal_version = effective.versions(MAPPINGS)
        # Portals sharing only their tenant's override share its compiled set.
        owner = f"{portal}/{effective.tenant}" if portal_version else f"/{effective.tenant}"
        key = (self.registry.generation, owner, tenant_version, portal_version)
        hit = self._sets.get(key)
        if hit is not None:
            self._sets.move_to_end(key)
            return hit
        compiled = self.compose(base, effective)
        self._sets[key] = compiled
        while len(self._sets) > self.max_sets:
            self._sets.popitem(last=False)
        return compiled

    @staticmethod
    def compose(base: MappingSet, effective: EffectiveConfig) -> MappingSet:
        """The default set overlaid by each stored override, lowest first. Stored overrides were
        valid when stored; one that no longer parses is skipped (logged), never half-applied."""
        result = base
        for layer, stored in effective.layers(MAPPINGS):
            try:
                result = result.overlay(parse_override(layer, stored.document.mappings))
            except MappingError as exc:
                log.error(
                    "stored mapping override does not parse; skipped",
                    extra={"layer": layer, "version": stored.version, "errors": exc.errors},
                )
        return result
