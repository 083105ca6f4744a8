"""The CRM search engine: request validation, filters, sorting and paging."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from .properties import PropertyDef

OPERATORS = frozenset(
    {
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
    }
)
MAX_GROUPS = 5
MAX_FILTERS_PER_GROUP = 6
MAX_FILTERS = 18
MAX_LIMIT = 200
MAX_RESULTS = 10_000
MAX_BODY_CHARS = 3_000

_NUMERIC_TYPES = frozenset({"number", "date", "datetime"})
_TOKEN_SPLIT = re.compile(r"[^\w@.*-]+")


class SearchError(ValueError):
    """A search request HubSpot would answer with 400."""


def parse_datetime_ms(value: str) -> int | None:
    """Epoch milliseconds of an epoch-ms string, an ISO-8601 datetime or a YYYY-MM-DD date."""
    v = value.strip()
    if not v:
        return None
    if v.lstrip("-").isdigit():
        return int(v)
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def ms_to_iso(ms: int) -> str:
    """``2024-05-01T10:00:00.123Z`` for epoch milliseconds (the second's text is cached: every
    record served formats its timestamps)."""
    return _second_to_iso(ms // 1000) + f"{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second_to_iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def _num(prop: PropertyDef | None, value: Any) -> float | None:
    if value is None:
        return None
    s = str(value)
    if prop is not None and prop.type in ("date", "datetime"):
        ms = parse_datetime_ms(s)
        return float(ms) if ms is not None else None
    try:
        return float(s)
    except ValueError:
        return None


def _tokens(value: str) -> list[str]:
    return [t for t in _TOKEN_SPLIT.split(value.lower()) if t]


def _token_match(stored: str, pattern: str) -> bool:
    pat = pattern.lower().strip()
    if "*" in pat:
        rx = re.compile("^" + ".*".join(re.escape(p) for p in pat.split("*")) + "$")
        return any(rx.match(t) for t in _tokens(stored)) or bool(rx.match(stored.lower()))
    return pat in _tokens(stored) or pat == stored.lower()


Predicate = Callable[[dict[str, str]], bool]


def compile_filter(f: dict[str, Any], props: dict[str, PropertyDef]) -> Predicate:
    """Turns one filter into a predicate over an object's properties."""
    if not isinstance(f, dict):
        raise SearchError("Invalid input JSON on line 1: filters must be objects")
    name = f.get("propertyName")
    op = f.get("operator")
    if not isinstance(name, str) or not name:
        raise SearchError("Invalid input JSON: propertyName is required")
    if op not in OPERATORS:
        raise SearchError(f"Invalid input JSON: unknown operator {op!r}")
    prop = props.get(name)
    if prop is None and name != "id":
        raise SearchError(f"There was a problem with the request. Property {name} does not exist")
    numeric = (prop is not None and prop.type in _NUMERIC_TYPES) or name in ("hs_object_id", "id")
    key = "hs_object_id" if name == "id" else name

    if op == "HAS_PROPERTY":
        return lambda p: p.get(key, "") != ""
    if op == "NOT_HAS_PROPERTY":
        return lambda p: p.get(key, "") == ""
    if op in ("IN", "NOT_IN"):
        values = f.get("values")
        if not isinstance(values, list) or not values:
            raise SearchError(f"{op} requires a non-empty 'values' list")
        if numeric:
            wanted_n = {_num(prop, v) for v in values}
            hit_n: Predicate = lambda p: _num(prop, p.get(key)) in wanted_n  # noqa: E731
            return hit_n if op == "IN" else (lambda p: p.get(key, "") != "" and not hit_n(p))
        wanted = {str(v).lower() for v in values}

        def hit(p: dict[str, str]) -> bool:
            v = p.get(key, "")
            # Multi-value enumerations hold ";"-separated values.
            return v.lower() in wanted or any(x.lower() in wanted for x in v.split(";") if x)

        return hit if op == "IN" else (lambda p: p.get(key, "") != "" and not hit(p))
    if op in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
        pattern = f.get("value")
        if pattern is None:
            raise SearchError(f"{op} requires a 'value'")
        pat = str(pattern)
        if op == "CONTAINS_TOKEN":
            return lambda p: _token_match(p.get(key, ""), pat)
        return lambda p: not _token_match(p.get(key, ""), pat)
    if "value" not in f:
        raise SearchError(f"{op} requires a 'value'")
    if op == "BETWEEN":
        if "highValue" not in f:
            raise SearchError("BETWEEN requires 'value' and 'highValue'")
        if numeric:
            lo, hi = _num(prop, f["value"]), _num(prop, f["highValue"])
            if lo is None or hi is None:
                raise SearchError("BETWEEN values must be numbers or dates")

            def between(p: dict[str, str]) -> bool:
                x = _num(prop, p.get(key))
                return x is not None and lo <= x <= hi

            return between
        slo, shi = str(f["value"]).lower(), str(f["highValue"]).lower()
        return lambda p: p.get(key, "") != "" and slo <= p.get(key, "").lower() <= shi
    if numeric:
        target = _num(prop, f["value"])
        if target is None:
            raise SearchError(f"{f['value']} is not a valid value for {name}")
        cmp = _NUM_CMP[op]

        def num_pred(p: dict[str, str]) -> bool:
            x = _num(prop, p.get(key))
            if x is None:
                return op == "NEQ"
            return cmp(x, target)

        return num_pred
    starget = str(f["value"]).lower()
    scmp = _NUM_CMP[op]

    def str_pred(p: dict[str, str]) -> bool:
        x = p.get(key, "")
        if x == "":
            return op == "NEQ"
        return scmp(x.lower(), starget)

    return str_pred


_NUM_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "EQ": lambda a, b: a == b,
    "NEQ": lambda a, b: a != b,
    "LT": lambda a, b: a < b,
    "LTE": lambda a, b: a <= b,
    "GT": lambda a, b: a > b,
    "GTE": lambda a, b: a >= b,
}


def compile_search(
    body: dict[str, Any],
    props: dict[str, PropertyDef],
    object_type: str,
    query_props: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Validates a search body. Returns the predicate, sort keys, limit and offset.

    ``query_props``: where the free-text ``query`` looks (default: the standard type's).
    """
    from .properties import QUERY_PROPERTIES

    groups = body.get("filterGroups") or []
    if not isinstance(groups, list):
        raise SearchError("filterGroups must be a list")
    if len(groups) > MAX_GROUPS:
        raise SearchError(f"Too many filter groups: {len(groups)}. The maximum is {MAX_GROUPS}.")
    total = 0
    compiled: list[list[Predicate]] = []
    for g in groups:
        filters = (g or {}).get("filters") or []
        if len(filters) > MAX_FILTERS_PER_GROUP:
            raise SearchError(
                f"Too many filters in a group: {len(filters)}. The maximum is {MAX_FILTERS_PER_GROUP}."
            )
        total += len(filters)
        compiled.append([compile_filter(f, props) for f in filters])
    if total > MAX_FILTERS:
        raise SearchError(f"Too many filters: {total}. The maximum is {MAX_FILTERS}.")

    limit = body.get("limit", 10)
    if not isinstance(limit, int) or limit < 0:
        raise SearchError("limit must be a non-negative integer")
    if limit > MAX_LIMIT:
        raise SearchError(f"limit must be less than or equal to {MAX_LIMIT}")
    after_raw = body.get("after") or 0
    try:
        after = int(after_raw)
    except (TypeError, ValueError):
        raise SearchError(f"after must be an integer offset, got {after_raw!r}") from None
    if after + limit > MAX_RESULTS or after >= MAX_RESULTS:
        raise SearchError(
            f"The maximum number of results a search can page through is {MAX_RESULTS}; "
            f"after={after} with limit={limit} goes past it."
        )

    query = body.get("query")
    qprops = query_props if query_props is not None else QUERY_PROPERTIES[object_type]

    def predicate(p: dict[str, str]) -> bool:
        if compiled and not any(all(f(p) for f in grp) for grp in compiled):
            return False
        if query:
            q = str(query)
            return any(_token_match(p.get(n, ""), q + "*") for n in qprops)
        return True

    sorts = body.get("sorts") or []
    sort_keys: list[tuple[str, bool]] = []
    for s in sorts:
        if isinstance(s, str):  # shorthand "-createdate" or "createdate"
            desc = s.startswith("-")
            sort_keys.append((s.lstrip("-"), desc))
        elif isinstance(s, dict):
            name = s.get("propertyName")
            if name not in props and name != "id":
                raise SearchError(f"Property {name} does not exist")
            sort_keys.append((name, str(s.get("direction", "ASCENDING")).upper() == "DESCENDING"))
    if len(sort_keys) > 1:
        raise SearchError("Only one sort is supported")
    return {"predicate": predicate, "sorts": sort_keys, "limit": limit, "after": after}


def sort_objects(
    items: Iterable[tuple[int, dict[str, str]]], sorts: list[tuple[str, bool]], props: dict[str, PropertyDef]
) -> list[tuple[int, dict[str, str]]]:
    """Sorts (id, properties) pairs; ties and the default order are by ascending id."""
    out = sorted(items, key=lambda t: t[0])
    for name, desc in reversed(sorts):
        key = "hs_object_id" if name == "id" else name
        prop = props.get(key)
        numeric = prop is not None and prop.type in _NUMERIC_TYPES

        def sk(
            t: tuple[int, dict[str, str]],
            key: str = key,
            numeric: bool = numeric,
            prop: PropertyDef | None = prop,
        ) -> tuple[int, Any]:
            v = t[1].get(key, "")
            if v == "":
                return (1, 0)  # empty values sort last
            if numeric:
                n = _num(prop, v)
                return (0, n if n is not None else 0.0)
            return (0, v.lower())

        present = [t for t in out if t[1].get(key, "") != ""]
        missing = [t for t in out if t[1].get(key, "") == ""]
        present.sort(key=sk, reverse=desc)
        out = present + missing
    return out
