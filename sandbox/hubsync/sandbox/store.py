"""The CRM data of one portal: objects, unique-value indexes, associations, search index.

Every write goes through ``PortalStore`` so that validation, unique values, timestamps and
change events (which become webhooks) are handled in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import ApiError, conflict, error_body, validation_error
from .objecttypes import ENGAGEMENTS, ObjectType, TypeRegistry
from .pipelines import Pipeline, check_pipeline, default_pipelines
from .properties import (
    READ_ONLY,
    PropertyDef,
    PropertyGroup,
    default_groups,
    default_properties,
    validate_value,
)
from .search import compile_search, ms_to_iso, parse_datetime_ms, sort_objects

# One end of an association: (object type, object id).
ObjectRef = tuple[str, int]


class Clock:
    """Wall-clock milliseconds with an adjustable offset, so tests can expire tokens instantly.

    ``freeze()`` stops time (rate windows, token expiry and index lag then move only with
    ``advance``), which makes limit tests deterministic on a loaded machine.
    """

    def __init__(self) -> None:
        self.offset_ms = 0
        self.frozen_at: int | None = None

    def now_ms(self) -> int:
        if self.frozen_at is not None:
            return self.frozen_at + self.offset_ms
        return int(time.time() * 1000) + self.offset_ms

    def advance(self, seconds: float) -> None:
        self.offset_ms += int(seconds * 1000)

    def freeze(self) -> None:
        if self.frozen_at is None:
            self.frozen_at = int(time.time() * 1000)

    def unfreeze(self) -> None:
        if self.frozen_at is not None:
            # Keep "now" continuous: the time spent frozen becomes part of the offset.
            self.offset_ms -= int(time.time() * 1000) - self.frozen_at
            self.frozen_at = None

    def reset(self) -> None:
        self.offset_ms = 0
        self.frozen_at = None


@dataclass(frozen=True, slots=True)
class WriteSource:
    """Who made a change: becomes ``changeSource``/``sourceId`` of the webhook events."""

    change_source: str
    source_id: str | None = None
    app_id: int | None = None


@dataclass(slots=True)
class Change:
    portal_id: int
    object_type: str
    object_id: int
    kind: str  # creation, propertyChange, deletion, merge, restore, associationChange
    occurred_at: int
    source: WriteSource
    property_name: str | None = None
    property_value: str | None = None
    write_trace_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class CrmObject:
    __slots__ = (
        "archived",
        "archived_at",
        "created_at",
        "created_iso",
        "id",
        "id_str",
        "props",
        "updated_at",
        "updated_iso",
        "versions",
    )

    def __init__(self, oid: int, props: dict[str, str], now: int):
        self.id = oid
        self.id_str = str(oid)
        self.props = props
        self.created_at = now
        self.created_iso = ms_to_iso(now)
        self.updated_at = now
        self.updated_iso = self.created_iso
        self.archived = False
        self.archived_at: int | None = None
        # (visible_at_ms, snapshot or None when archived): what search sees, given index lag.
        self.versions: list[tuple[int, dict[str, str] | None]] = []

    def touch(self, now: int) -> None:
        self.updated_at = now
        self.updated_iso = ms_to_iso(now)

    def to_wire(self, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
        p = self.props
        out: dict[str, Any] = {
            "id": self.id_str,
            "properties": dict(zip(names, map(p.get, names), strict=True)),
            "createdAt": self.created_iso,
            "updatedAt": self.updated_iso,
            "archived": self.archived,
        }
        if self.archived and self.archived_at is not None:
            out["archivedAt"] = ms_to_iso(self.archived_at)
        return out


class PortalStore:
    """The CRM of one portal."""

    def __init__(
        self,
        hub_id: int,
        clock: Clock,
        emit: Callable[[Change], None],
        first_id: int = 1001,
        index_lag_ms: int = 0,
        property_change_on_creation: bool = True,
        merged_id_redirect: bool = True,
    ):
        self.hub_id = hub_id
        self.clock = clock
        self.emit = emit
        self.index_lag_ms = index_lag_ms
        self.property_change_on_creation = property_change_on_creation
        self.merged_id_redirect = merged_id_redirect
        self.types = TypeRegistry(hub_id)
        # object type → merged-away id → id of the record it was merged into
        self.merged_into: dict[str, dict[int, int]] = {}
        self._next_id = first_id
        self.objects: dict[str, dict[int, CrmObject]] = {}
        self.properties: dict[str, dict[str, PropertyDef]] = {}
        self.groups: dict[str, dict[str, PropertyGroup]] = {}
        # object type → unique property → value → object id
        self.unique: dict[str, dict[str, dict[str, int]]] = {}
        for t in list(self.types.types):
            self._init_type(t, default_properties(t))
        # object type → pipeline id → pipeline (deals and tickets)
        self.pipelines: dict[str, dict[str, Pipeline]] = default_pipelines(clock.now_ms())
        # (type, id) → (to type, to id) → association type ids
        self.assocs: dict[ObjectRef, dict[ObjectRef, set[int]]] = {}

    def _init_type(self, t: str, props: dict[str, PropertyDef]) -> None:
        self.merged_into[t] = {}
        self.objects[t] = {}
        self.properties[t] = props
        self.groups[t] = default_groups(t, props)
        self.unique[t] = {n: {} for n, p in props.items() if p.has_unique_value or n == "email"}

    def add_type(self, ot: ObjectType, props: dict[str, PropertyDef]) -> None:
        """Registers a custom object type (schemas API)."""
        self.types.add(ot)
        self._init_type(ot.name, props)

    def remove_type(self, object_type: str) -> None:
        """Drops a custom object type that has no live records (schema deletion)."""
        self.types.remove(object_type)
        for d in (self.objects, self.properties, self.groups, self.unique, self.merged_into):
            d.pop(object_type, None)

    def type_def(self, object_type: str) -> ObjectType:
        return self.types.types[object_type]

    # ---- properties -------------------------------------------------------------------------

    def add_property(self, object_type: str, prop: PropertyDef) -> None:
        self.properties[object_type][prop.name] = prop
        if prop.has_unique_value:
            self.unique[object_type].setdefault(prop.name, {})

    def normalize(
        self,
        object_type: str,
        raw: Any,
        existing: CrmObject | None = None,
        creating: bool = False,
    ) -> dict[str, str]:
        """Checks property names and values; returns them as strings. Raises 400 like HubSpot.

        ``creating``: the values are a new record's (required properties must be there);
        ``existing``: the record they update (its pipeline decides which stages are valid).
        """
        out = self._normalize(object_type, raw)
        if creating:
            missing = [n for n in self.type_def(object_type).required if not out.get(n)]
            if missing:
                raise validation_error(
                    f"Missing required properties for {self.type_def(object_type).singular}: {missing}",
                    errors=[
                        _prop_problem(n, f"{n} is required", "REQUIRED_PROPERTY_MISSING") for n in missing
                    ],
                )
        product = out.get("hs_product_id") if object_type == "line_items" else None
        if product and self.get("products", product) is None:
            # A line item's product must exist (HubSpot refuses the write otherwise).
            raise validation_error(
                f"hs_product_id {product} does not name an existing product",
                errors=[
                    _prop_problem("hs_product_id", f"product {product} does not exist", "INVALID_OPTION")
                ],
            )
        pipes = self.pipelines.get(object_type)
        if pipes is not None and (creating or existing is not None or out):
            check_pipeline(object_type, pipes, out, existing.props if existing else None, creating)
        return out

    def _normalize(self, object_type: str, raw: Any) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise validation_error("Invalid input JSON on line 1: properties must be an object")
        defs = self.properties[object_type]
        out: dict[str, str] = {}
        problems: list[dict[str, Any]] = []
        for name, value in raw.items():
            prop = defs.get(name)
            if prop is None:
                problems.append(
                    _prop_problem(name, f'Property "{name}" does not exist', "PROPERTY_DOESNT_EXIST")
                )
                continue
            if name in READ_ONLY and name not in ("createdate", "hs_createdate"):
                problems.append(_prop_problem(name, f'"{name}" is a read only property', "READ_ONLY_VALUE"))
                continue
            if value is None:
                s = ""
            elif isinstance(value, bool):
                s = "true" if value else "false"
            elif isinstance(value, float) and value.is_integer():
                s = str(int(value))
            else:
                s = str(value)
            msg = validate_value(prop, s)
            if msg is not None:
                code = "INVALID_DATE" if prop.type == "date" else "INVALID_OPTION"
                if prop.type == "number":
                    code = "INVALID_INTEGER"
                problems.append(_prop_problem(name, msg, code))
                continue
            if s and prop.type == "datetime":
                s = ms_to_iso(parse_datetime_ms(s) or 0)
            elif s and prop.type == "date":
                s = ms_to_iso(parse_datetime_ms(s) or 0)[:10]
            elif name == "email":
                s = s.strip().lower()
            out[name] = s
        if problems:
            inner = [
                {
                    "isValid": False,
                    "message": p["message"],
                    "error": p["code"],
                    "name": p["context"]["propertyName"][0],
                    "localizedErrorMessage": p["message"],
                    "portalId": self.hub_id,
                }
                for p in problems
            ]
            raise validation_error(
                "Property values were not valid: " + orjson.dumps(inner).decode(), errors=problems
            )
        return out

    def read_names(self, object_type: str, requested: list[str] | None) -> tuple[str, ...]:
        if not requested:
            return self.type_def(object_type).default_read
        defs = self.properties[object_type]
        # HubSpot ignores names that do not exist; hs_object_id is always there.
        names = [n for n in requested if n in defs]
        if "hs_object_id" not in names:
            names.append("hs_object_id")
        return tuple(names)

    # ---- lookups ------------------------------------------------------------------------------

    def get(self, object_type: str, key: str, id_property: str | None = None) -> CrmObject | None:
        """Live (not archived) object by id or by a unique property value."""
        if id_property and id_property not in ("hs_object_id", "id"):
            index = self.unique[object_type].get(id_property)
            if index is None:
                return None
            oid = index.get(key.lower() if id_property == "email" else key)
            if oid is None:
                return None
        else:
            try:
                oid = int(key)
            except (TypeError, ValueError):
                return None
        obj = self.objects[object_type].get(oid)
        if obj is not None and obj.archived and self.merged_id_redirect:
            obj = self.objects[object_type].get(self.merged_into[object_type].get(oid, -1), obj)
        return obj if obj is not None and not obj.archived else None

    def check_id_property(self, object_type: str, id_property: str | None) -> None:
        if id_property in (None, "hs_object_id", "id"):
            return
        if id_property not in self.unique[object_type]:
            if id_property not in self.properties[object_type]:
                raise validation_error(f"Property {id_property} does not exist")
            raise validation_error(
                f"{id_property} is not a unique identifier property. Use a property with "
                "hasUniqueValue=true" + (" or email" if object_type == "contacts" else "") + "."
            )

    def unique_conflict(
        self, object_type: str, props: dict[str, str], self_id: int | None
    ) -> ApiError | None:
        for name, index in self.unique[object_type].items():
            value = props.get(name)
            if not value:
                continue
            other = index.get(value)
            if other is not None and other != self_id:
                singular = self.type_def(object_type).singular
                if name == "email":
                    return conflict(f"{singular.title()} already exists. Existing ID: {other}")
                return conflict(
                    f"A {singular} with the unique value {value!r} for property {name!r} "
                    f"already exists. Existing ID: {other}"
                )
        return None

    # ---- writes -----------------------------------------------------------------------------

    def _index(self, object_type: str, obj: CrmObject, old: dict[str, str] | None) -> None:
        for name, index in self.unique[object_type].items():
            if old is not None and old.get(name) and index.get(old[name]) == obj.id:
                del index[old[name]]
            if not obj.archived and obj.props.get(name):
                index[obj.props[name]] = obj.id

    def _version(self, obj: CrmObject, now: int) -> None:
        if self.index_lag_ms > 0:
            obj.versions.append((now + self.index_lag_ms, None if obj.archived else dict(obj.props)))

    def create(
        self, object_type: str, props: dict[str, str], source: WriteSource, trace_id: str | None = None
    ) -> CrmObject:
        err = self.unique_conflict(object_type, props, None)
        if err is not None:
            raise err
        now = self.clock.now_ms()
        oid = self._next_id
        self._next_id += 1
        iso = ms_to_iso(now)
        full = {k: v for k, v in props.items() if v != ""}
        full["hs_object_id"] = str(oid)
        full.setdefault("hs_createdate" if object_type in ENGAGEMENTS else "createdate", iso)
        full["hs_lastmodifieddate"] = iso
        if object_type == "contacts":
            full["lastmodifieddate"] = iso
        if object_type == "deals":
            full.setdefault("pipeline", "default")
        if object_type == "tickets":
            full.setdefault("hs_pipeline", "0")
        obj = CrmObject(oid, full, now)
        self.objects[object_type][oid] = obj
        self._index(object_type, obj, None)
        self._version(obj, now)
        self.emit(Change(self.hub_id, object_type, oid, "creation", now, source, write_trace_id=trace_id))
        if self.property_change_on_creation:
            for name, value in props.items():
                if value != "":
                    self.emit(
                        Change(
                            self.hub_id,
                            object_type,
                            oid,
                            "propertyChange",
                            now,
                            source,
                            name,
                            value,
                            trace_id,
                        )
                    )
        return obj

    def update(
        self,
        object_type: str,
        obj: CrmObject,
        props: dict[str, str],
        source: WriteSource,
        trace_id: str | None = None,
    ) -> CrmObject:
        err = self.unique_conflict(object_type, props, obj.id)
        if err is not None:
            raise err
        now = self.clock.now_ms()
        old = dict(obj.props)
        changed = [(k, v) for k, v in props.items() if obj.props.get(k, "") != v]
        for k, v in changed:
            if v == "":
                obj.props.pop(k, None)
            else:
                obj.props[k] = v
        # HubSpot bumps the modification date on every accepted update, changed or not.
        iso = ms_to_iso(now)
        obj.props["hs_lastmodifieddate"] = iso
        if object_type == "contacts":
            obj.props["lastmodifieddate"] = iso
        obj.touch(now)
        self._index(object_type, obj, old)
        self._version(obj, now)
        for name, value in changed:
            self.emit(
                Change(self.hub_id, object_type, obj.id, "propertyChange", now, source, name, value, trace_id)
            )
        return obj

    def archive(self, object_type: str, obj: CrmObject, source: WriteSource) -> None:
        now = self.clock.now_ms()
        old = dict(obj.props)
        obj.archived = True
        obj.archived_at = now
        obj.touch(now)
        self._index(object_type, obj, old)
        self._version(obj, now)
        self.emit(Change(self.hub_id, object_type, obj.id, "deletion", now, source))

    def purge(self, object_type: str, obj: CrmObject, source: WriteSource) -> None:
        """GDPR delete: the object is gone for good (not restorable), associations too."""
        now = self.clock.now_ms()
        old = dict(obj.props)
        obj.archived = True
        self._index(object_type, obj, old)
        del self.objects[object_type][obj.id]
        for tt, tid in list(self.assocs.get((object_type, obj.id), {})):
            self.dissociate((object_type, obj.id), (tt, tid), None, source, emit=False)
        self.assocs.pop((object_type, obj.id), None)
        self.emit(Change(self.hub_id, object_type, obj.id, "privacyDeletion", now, source))

    def restore(self, object_type: str, oid: int, source: WriteSource) -> CrmObject:
        obj = self.objects[object_type].get(oid)
        if obj is None or not obj.archived or oid in self.merged_into[object_type]:
            # A record merged into another can't be restored.
            raise ApiError(
                404,
                error_body(f"No archived {self.type_def(object_type).singular} {oid}", "OBJECT_NOT_FOUND"),
            )
        err = self.unique_conflict(object_type, obj.props, obj.id)
        if err is not None:
            raise err
        now = self.clock.now_ms()
        obj.archived = False
        obj.archived_at = None
        obj.touch(now)
        self._index(object_type, obj, None)
        self._version(obj, now)
        self.emit(Change(self.hub_id, object_type, oid, "restore", now, source))
        return obj

    def merge(self, object_type: str, primary: CrmObject, other: CrmObject, source: WriteSource) -> CrmObject:
        """Merges ``other`` into ``primary``: primary keeps its values, gains the ones it lacks."""
        now = self.clock.now_ms()
        moved = 0
        old = dict(primary.props)
        other_old = dict(other.props)
        other.archived = True
        other.archived_at = now
        self._index(object_type, other, other_old)
        for k, v in other.props.items():
            if k not in primary.props and k not in READ_ONLY:
                primary.props[k] = v
                moved += 1
        merged = self.merged_into[object_type]
        for old_id, into in list(merged.items()):
            if into == other.id:
                merged[old_id] = primary.id
        merged[other.id] = primary.id
        primary.props["hs_merged_object_ids"] = ";".join(
            str(i) for i in sorted(i for i, into in merged.items() if into == primary.id)
        )
        primary.touch(now)
        self._index(object_type, primary, old)
        self._version(primary, now)
        self._version(other, now)
        for (tt, tid), types in list(self.assocs.get((object_type, other.id), {}).items()):
            self.associate((object_type, primary.id), (tt, tid), types, source, emit=False)
            self.dissociate((object_type, other.id), (tt, tid), None, source, emit=False)
        self.emit(
            Change(
                self.hub_id,
                object_type,
                primary.id,
                "merge",
                now,
                source,
                extra={
                    "primaryObjectId": primary.id,
                    "mergedObjectIds": [other.id],
                    "newObjectId": primary.id,
                    "numberOfPropertiesMoved": moved,
                },
            )
        )
        return primary

    # ---- associations -------------------------------------------------------------------------

    def associate(
        self, a: ObjectRef, b: ObjectRef, type_ids: set[int] | None, source: WriteSource, emit: bool = True
    ) -> set[int]:
        defs = self.types.assoc_defs
        wanted = set(type_ids) if type_ids else {self.types.default_assoc[(a[0], b[0])]}
        rev_types = {defs[t].inverse_id for t in wanted}
        fwd = self.assocs.setdefault(a, {}).setdefault(b, set())
        back = self.assocs.setdefault(b, {}).setdefault(a, set())
        new = wanted - fwd
        fwd |= wanted
        back |= rev_types
        if new and emit:
            primary = any(defs[t].label == "Primary" and defs[t].category == "HUBSPOT_DEFINED" for t in new)
            self._assoc_change(*a, *b, False, primary, source)
        return fwd

    def dissociate(
        self, a: ObjectRef, b: ObjectRef, type_ids: set[int] | None, source: WriteSource, emit: bool = True
    ) -> bool:
        fwd_map = self.assocs.get(a, {})
        fwd = fwd_map.get(b)
        if not fwd:
            return False
        removed = set(fwd) if not type_ids else fwd & type_ids
        fwd -= removed
        back_map = self.assocs.get(b, {})
        back = back_map.get(a)
        if back is not None:
            back -= {self.types.assoc_defs[t].inverse_id for t in removed}
        if not fwd:
            fwd_map.pop(b, None)
            back_map.pop(a, None)
        if emit:
            self._assoc_change(*a, *b, True, False, source)
        return True

    def _assoc_change(
        self, ft: str, fid: int, tt: str, tid: int, removed: bool, primary: bool, source: WriteSource
    ) -> None:
        now = self.clock.now_ms()
        for a, aid, b, bid in ((ft, fid, tt, tid), (tt, tid, ft, fid)):
            self.emit(
                Change(
                    self.hub_id,
                    a,
                    aid,
                    "associationChange",
                    now,
                    source,
                    extra={
                        "associationType": self.types.association_label(a, b),
                        "fromObjectId": aid,
                        "toObjectId": bid,
                        "associationRemoved": removed,
                        "isPrimaryAssociation": primary,
                    },
                )
            )

    def associations_of(self, from_type: str, from_id: int, to_type: str) -> list[tuple[int, set[int]]]:
        return sorted(
            (tid, types)
            for (tt, tid), types in self.assocs.get((from_type, from_id), {}).items()
            if tt == to_type
        )

    # ---- reads --------------------------------------------------------------------------------

    def page(
        self, object_type: str, limit: int, after: int, archived: bool
    ) -> tuple[list[CrmObject], int | None]:
        objs = self.objects[object_type]
        out: list[CrmObject] = []
        next_after: int | None = None
        for oid in sorted(objs):
            if oid < after:
                continue
            o = objs[oid]
            if o.archived != archived:
                continue
            if len(out) == limit:
                next_after = oid
                break
            out.append(o)
        return out, next_after

    def search(
        self, object_type: str, body: dict[str, Any]
    ) -> tuple[list[tuple[int, dict[str, str]]], int, int]:
        """Returns (page of (id, indexed properties), total, offset after the page or -1)."""
        defs = self.properties[object_type]
        spec = compile_search(body, defs, object_type, self.type_def(object_type).query_props)
        now = self.clock.now_ms()
        pred = spec["predicate"]
        hits: list[tuple[int, dict[str, str]]] = []
        for obj in self.objects[object_type].values():
            view = self._indexed_view(obj, now)
            if view is not None and pred(view):
                hits.append((obj.id, view))
        hits = sort_objects(hits, spec["sorts"], defs)
        start, limit = spec["after"], spec["limit"]
        page = hits[start : start + limit]
        nxt = start + limit if start + limit < len(hits) else -1
        return page, len(hits), nxt

    def _indexed_view(self, obj: CrmObject, now: int) -> dict[str, str] | None:
        if self.index_lag_ms <= 0 or not obj.versions:
            return None if obj.archived else obj.props
        # Drop versions superseded by a later one that is already visible.
        vs = obj.versions
        i = 0
        while i + 1 < len(vs) and vs[i + 1][0] <= now:
            i += 1
        if i:
            del vs[:i]
        if vs[0][0] > now:
            return None  # not yet indexed at all
        return vs[0][1]


def _prop_problem(name: str, message: str, code: str) -> dict[str, Any]:
    return {"message": message, "code": code, "context": {"propertyName": [name]}}
