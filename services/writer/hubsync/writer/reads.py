"""Reads from HubSpot: records by id or unique value (batch/read), properties, search pages."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from hubsync.core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from hubsync.writer.hubspot_client import HubSpotClient, HubSpotResponse

__all__ = [
    "OBJECT_TYPES",
    "SEARCH_OPERATORS",
    "PropertyDef",
    "Record",
    "RecordReader",
    "SearchPage",
    "SearchQuery",
    "check_object_type",
    "raise_for",
    "run_all",
    "to_record",
    "validate_search",
]

if TYPE_CHECKING:
    from hubsync.writer.objecttypes import ObjectTypes

_CUSTOM_ID = re.compile(r"^2-\d+$")

T = TypeVar("T")
# The standard object types by canonical name; custom objects are resolved per portal
# (objecttypes.ObjectTypes).
OBJECT_TYPES = (
    "companies",
    "contacts",
    "deals",
    "tickets",
    "products",
    "line_items",
    "quotes",
    "notes",
    "calls",
    "emails",
    "meetings",
    "tasks",
)
SEARCH_OPERATORS = frozenset(
    [
        "EQ",
        "NEQ",
        "LT",
        "LTE",
        "GT",
        "GTE",
        "BETWEEN",
        "IN",
        "NOT_IN",
        "HAS_PROPERTY",
        "NOT_HAS_PROPERTY",
        "CONTAINS_TOKEN",
        "NOT_CONTAINS_TOKEN",
    ]
)


@dataclass
class Record:
    """A HubSpot record as the writer returns it."""

    id: str
    object_type: str
    properties: dict[str, str]
    created_at: datetime | None = None
    updated_at: datetime | None = None
    archived: bool = False


@dataclass
class PropertyDef:
    """One property of an object type (the Properties API)."""

    name: str
    label: str
    type: str
    field_type: str
    has_unique_value: bool
    hubspot_defined: bool
    options: list[str]
    description: str


@dataclass
class SearchPage:
    """One page of search results and the token of the next."""

    records: list[Record]
    total: int
    after: str


@dataclass
class SearchQuery:
    """A search request's filter groups, sorts, properties, text, page size and cursor."""

    filter_groups: list[list[dict[str, Any]]] = field(default_factory=list)
    sorts: list[dict[str, str]] = field(default_factory=list)
    properties: list[str] = field(default_factory=list)
    query: str = ""
    limit: int = 100
    after: str = ""

    def body(self) -> dict[str, Any]:
        """Return the search request's JSON body."""
        body: dict[str, Any] = {
            "filterGroups": [{"filters": group} for group in self.filter_groups],
            "sorts": self.sorts,
            "properties": self.properties,
            "limit": self.limit,
        }
        if self.query:
            body["query"] = self.query
        if self.after:
            body["after"] = self.after
        return body


def check_object_type(object_type: str, field_name: str = "object_type") -> None:
    """Only for canonical names already resolved (standard, or a custom object's 2-… id)."""
    if object_type not in OBJECT_TYPES and not _CUSTOM_ID.match(object_type):
        raise InvalidArgument(
            f"unknown object type {object_type!r}",
            violations={field_name: f"must be one of {', '.join(OBJECT_TYPES)}"},
        )


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def to_record(object_type: str, raw: dict[str, Any]) -> Record:
    """Return the record of one HubSpot result."""
    props = {k: ("" if v is None else str(v)) for k, v in (raw.get("properties") or {}).items()}
    return Record(
        id=str(raw.get("id", "")),
        object_type=object_type,
        properties=props,
        created_at=_parse_time(raw.get("createdAt")),
        updated_at=_parse_time(raw.get("updatedAt")),
        archived=bool(raw.get("archived", False)),
    )


def raise_for(response: HubSpotResponse, what: str) -> None:
    """Turn a HubSpot refusal of a read into the matching domain error."""
    if response.ok:
        return
    e = response.error()
    message = f"HubSpot answered {response.status} to {what}: {e['message']}"
    if response.status == 400:
        raise InvalidArgument(message, reason="HUBSPOT_BAD_REQUEST")
    if response.status == 403:
        raise PermissionDenied(message, reason="HUBSPOT_MISSING_SCOPES")
    if response.status == 404:
        raise NotFound(message, reason="HUBSPOT_NOT_FOUND")
    if response.status in (409, 414, 423):
        raise FailedPrecondition(message, reason="HUBSPOT_REFUSED")
    raise Unavailable(message, reason="HUBSPOT_UNAVAILABLE", retry_after=1.0)


async def run_all(coros: Sequence[Coroutine[Any, Any, T]], concurrency: int) -> list[T]:
    """Run ``coros`` at most ``concurrency`` at a time; returns their results in order.

    The first failure cancels the rest (nothing more is sent for a request that already failed) and is
    raised as itself, not as an exception group.
    """
    results: list[T | None] = [None] * len(coros)
    todo = iter(enumerate(coros))

    async def worker() -> None:
        for n, coro in todo:
            results[n] = await coro

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(max(concurrency, 1), len(coros))):
                group.create_task(worker())
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    finally:
        for _, coro in todo:  # never started: close them (no "never awaited" warning)
            coro.close()
    return results  # type: ignore[return-value]


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


class RecordReader:
    """Reads, properties and search pages of any object type (standard or custom)."""

    def __init__(
        self,
        client: HubSpotClient,
        chunk: int = 100,
        concurrency: int = 8,
        types: ObjectTypes | None = None,
    ) -> None:
        """Read through ``client``, ``chunk`` ids a call, ``concurrency`` calls at once."""
        from hubsync.writer.objecttypes import ObjectTypes

        self.client = client
        # Object type names (custom objects through the schemas API), shared with submissions.
        self.types = types or ObjectTypes(client)
        self.chunk = chunk
        # batch/read calls one ReadRecords has out at once (its chunks wait their turn).
        self.concurrency = concurrency

    async def _names(self, portal_id: int, object_type: str) -> tuple[str, str]:
        """Return (the name records are given, the name in HubSpot paths).

        A standard type's plural for both; a custom object keeps the caller's name (a mapping's)
        on its records, its 2-… id in paths.
        """
        resolved = await self.types.resolve(portal_id, object_type)
        return (object_type if resolved.startswith("2-") else resolved), resolved

    async def read(
        self,
        portal_id: int,
        object_type: str,
        ids: Sequence[str],
        *,
        id_property: str = "",
        properties: Sequence[str] = (),
        archived: bool = False,
        deadline: float | None = None,
    ) -> tuple[list[Record], list[str]]:
        """Return records by HubSpot id or unique value, 100 a call; returns (found, missing ids)."""
        named, object_type = await self._names(portal_id, object_type)
        if any(not i for i in ids):
            raise InvalidArgument("ids must not be empty", violations={"ids": "an id is empty"})
        unique = list(dict.fromkeys(ids))
        props = list(dict.fromkeys(properties))
        if id_property and props and id_property not in props:
            props.append(id_property)
        chunks = [unique[n : n + self.chunk] for n in range(0, len(unique), self.chunk)]
        results = await run_all(
            [
                self._read_chunk(portal_id, object_type, c, id_property, props, archived, deadline)
                for c in chunks
            ],
            self.concurrency,
        )
        records = [r for chunk in results for r in chunk]
        for r in records:
            r.object_type = named
        found: set[str] = set()
        for record in records:
            found.add(record.id)
            if id_property:
                value = record.properties.get(id_property, "")
                found.add(value.lower() if id_property == "email" else value)
        missing = [i for i in unique if (i.lower() if id_property == "email" else i) not in found]
        return records, missing

    async def _read_chunk(
        self,
        portal_id: int,
        object_type: str,
        ids: list[str],
        id_property: str,
        properties: list[str],
        archived: bool,
        deadline: float | None,
    ) -> list[Record]:
        body: dict[str, Any] = {"inputs": [{"id": i} for i in ids], "properties": properties}
        if id_property:
            body["idProperty"] = id_property
        response = await self.client.call(
            portal_id,
            "POST",
            f"/crm/v3/objects/{object_type}/batch/read",
            route="/crm/v3/objects/{objectType}/batch/read",
            json=body,
            params={"archived": "true"} if archived else None,
            deadline=deadline,
            records=len(ids),
        )
        if response.status in (502, 504) and len(ids) > 1:
            mid = len(ids) // 2
            a, b = await run_all(
                [
                    self._read_chunk(
                        portal_id, object_type, ids[:mid], id_property, properties, archived, deadline
                    ),
                    self._read_chunk(
                        portal_id, object_type, ids[mid:], id_property, properties, archived, deadline
                    ),
                ],
                2,
            )
            return [*a, *b]
        if response.status == 404:
            return []
        raise_for(response, "batch/read")
        body_out = response.body if isinstance(response.body, dict) else {}
        return [to_record(object_type, raw) for raw in body_out.get("results") or []]

    async def list_properties(self, portal_id: int, object_type: str) -> list[PropertyDef]:
        """Return the object type's properties."""
        object_type = await self.types.resolve(portal_id, object_type)
        response = await self.client.call(
            portal_id,
            "GET",
            f"/crm/v3/properties/{object_type}",
            route="/crm/v3/properties/{objectType}",
        )
        raise_for(response, "the Properties API")
        out = []
        for raw in (response.body or {}).get("results") or []:
            out.append(
                PropertyDef(
                    name=str(raw.get("name", "")),
                    label=str(raw.get("label", "")),
                    type=str(raw.get("type", "")),
                    field_type=str(raw.get("fieldType", "")),
                    has_unique_value=bool(raw.get("hasUniqueValue", False)),
                    hubspot_defined=bool(raw.get("hubspotDefined", False)),
                    options=[str(o.get("value", "")) for o in raw.get("options") or []],
                    description=str(raw.get("description", "")),
                )
            )
        return out

    async def search(
        self, portal_id: int, object_type: str, query: SearchQuery, deadline: float | None = None
    ) -> SearchPage:
        """Return one search page (under the search budget)."""
        named, object_type = await self._names(portal_id, object_type)
        response = await self.client.call(
            portal_id,
            "POST",
            f"/crm/v3/objects/{object_type}/search",
            route="/crm/v3/objects/{objectType}/search",
            json=query.body(),
            search=True,
            deadline=deadline,
        )
        raise_for(response, "search")
        body = response.body if isinstance(response.body, dict) else {}
        after = str(((body.get("paging") or {}).get("next") or {}).get("after") or "")
        records = [to_record(named, raw) for raw in body.get("results") or []]
        return SearchPage(records, int(body.get("total") or 0), after)


def validate_search(filter_groups: list[list[dict[str, Any]]], limit: int, max_limit: int = 200) -> None:
    """Raise InvalidArgument naming every limit a search exceeds."""
    violations: dict[str, str] = {}
    if len(filter_groups) > 5:
        violations["filter_groups"] = "at most 5 filter groups"
    total = 0
    for g, group in enumerate(filter_groups):
        if len(group) > 6:
            violations[f"filter_groups[{g}].filters"] = "at most 6 filters per group"
        total += len(group)
        for f, flt in enumerate(group):
            if not flt.get("propertyName"):
                violations[f"filter_groups[{g}].filters[{f}].property_name"] = "required"
            if flt.get("operator") not in SEARCH_OPERATORS:
                violations[f"filter_groups[{g}].filters[{f}].operator"] = "unknown operator"
    if total > 18:
        violations["filter_groups"] = "at most 18 filters in all"
    if limit < 0 or limit > max_limit:
        violations["page_size"] = f"must be 0..{max_limit}"
    if violations:
        raise InvalidArgument("invalid search", violations=violations)
