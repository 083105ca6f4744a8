"""The local trace store of ``hubsync run``: every span of the suite in one SQLite file.

The collector process (:mod:`hubsync.cli.trace_collector`) writes it; ``hubsync trace`` reads it,
while the suite runs (SQLite's WAL mode lets a reader in beside the writer) or after it stopped.

A change is found by what a developer has in hand: a trace id (or its first hex digits), or an id
the spans carry as an attribute: a HubSpot object id or event id (``hubsync.object_id``,
``hubsync.event_id``) or the external id of a pushed record (``hubsync.external_id``).

Nothing that could be a secret is stored. The services already strip URL query strings from
their spans; the store does it again on every string it keeps (attribute values, status messages,
event attributes, so an exception message quoting a URL loses its query too), and drops
attributes named like credentials (``authorization``, ``token``, ``secret``, ``password``,
``cookie``, ``api_key``), so no future exporter can slip one into the file. The file is created
with mode 0600.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from hubsync.core.telemetry import redact_query, strip_query

STORE_FILE = "traces.sqlite3"
# Attributes a change is searched by (their values, or each value of a list).
SEARCHED = ("hubsync.object_id", "hubsync.event_id", "hubsync.external_id")
# OTLP's span kinds and status codes, as stored.
KIND_NAMES = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
STATUS_ERROR = 2

_SECRET_NAME = re.compile(r"authorization|token|secret|password|passwd|cookie|api[_-]?key", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"<>]*)[?#][^\s'\"<>]*", re.IGNORECASE)
_BEARER = re.compile(r"\bBearer\s+\S+", re.IGNORECASE)
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{6,31}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT NOT NULL,
    service TEXT NOT NULL, name TEXT NOT NULL, kind INTEGER NOT NULL,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    status_code INTEGER NOT NULL, status_message TEXT NOT NULL,
    attributes TEXT NOT NULL, events TEXT NOT NULL, links TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
CREATE TABLE IF NOT EXISTS links (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL,
    linked_trace_id TEXT NOT NULL, linked_span_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS links_by_target ON links (linked_trace_id);
CREATE TABLE IF NOT EXISTS search (
    value TEXT NOT NULL, attribute TEXT NOT NULL, trace_id TEXT NOT NULL, start_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS search_by_value ON search (value);
"""


@dataclass(frozen=True)
class StoredSpan:
    """One span as the store keeps it (ids in lowercase hex, times in ns since the epoch)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int = 0
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    links: tuple[tuple[str, str], ...] = ()

    @property
    def failed(self) -> bool:
        """Whether the span ended with an error status."""
        return self.status_code == STATUS_ERROR


@dataclass(frozen=True)
class TraceSummary:
    """One trace at a glance: its time span, size, root and whether anything failed."""

    trace_id: str
    start_ns: int
    end_ns: int
    span_count: int
    services: tuple[str, ...]
    root: str
    errors: int


@dataclass
class TraceSpans:
    """A trace's own spans, and the spans of other traces that link into it (a batched HubSpot
    call carrying this trace's record, with its children): ``linked_to`` maps such a span's id to
    the span of this trace it links to."""

    trace_id: str
    spans: list[StoredSpan]
    linked_to: dict[str, str] = field(default_factory=dict)


# --- cleaning ----------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """``text`` without URL query strings or fragments and without bearer credentials."""
    return _BEARER.sub("Bearer REDACTED", _URL_IN_TEXT.sub(r"\1", text))


def clean_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attributes fit to store: credential-like names dropped, every URL without its query."""
    out: dict[str, Any] = {}
    for name, value in attributes.items():
        if _SECRET_NAME.search(name):
            continue
        if name == "url.query" and isinstance(value, str):
            out[name] = redact_query(value)
        elif isinstance(value, str):
            out[name] = clean_text(
                strip_query(value) if name in ("http.url", "url.full", "http.target") else value
            )
        elif isinstance(value, list):
            out[name] = [clean_text(v) if isinstance(v, str) else v for v in value]
        else:
            out[name] = value
    return out


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which) if which else None


def spans_from_otlp(request: trace_service_pb2.ExportTraceServiceRequest) -> list[StoredSpan]:
    """The spans of one OTLP export, cleaned."""
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        service = str(resource.get("service.name", "unknown"))
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                events = [
                    {
                        "name": e.name,
                        "time_ns": e.time_unix_nano,
                        "attributes": clean_attributes({a.key: _value(a.value) for a in e.attributes}),
                    }
                    for e in span.events
                ]
                out.append(
                    StoredSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        service=service,
                        name=clean_text(span.name),
                        kind=int(span.kind),
                        start_ns=int(span.start_time_unix_nano),
                        end_ns=int(span.end_time_unix_nano),
                        status_code=int(span.status.code),
                        status_message=clean_text(span.status.message),
                        attributes=clean_attributes({a.key: _value(a.value) for a in span.attributes}),
                        events=events,
                        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                    )
                )
    return out


def _searched_values(span: StoredSpan) -> Iterator[tuple[str, str]]:
    for name in SEARCHED:
        value = span.attributes.get(name)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item != "":
                yield str(item), name


# --- the store ---------------------------------------------------------------------------------


class TraceStore:
    """The SQLite file of one run directory. ``readonly`` opens it for ``hubsync trace``."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            if not path.exists():
                raise FileNotFoundError(path)
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)
            self._db = sqlite3.connect(path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        """Closes the database."""
        self._db.close()

    # --- writing -----------------------------------------------------------------------------

    def add(self, spans: Sequence[StoredSpan]) -> None:
        """Stores ``spans`` (a span stored again replaces the earlier copy)."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        s.trace_id,
                        s.span_id,
                        s.parent_span_id,
                        s.service,
                        s.name,
                        s.kind,
                        s.start_ns,
                        s.end_ns,
                        s.status_code,
                        s.status_message,
                        json.dumps(s.attributes),
                        json.dumps(s.events),
                        json.dumps(s.links),
                    )
                    for s in spans
                ],
            )
            self._db.executemany(
                "INSERT INTO links VALUES (?,?,?,?)",
                [(s.trace_id, s.span_id, t, sid) for s in spans for t, sid in s.links],
            )
            self._db.executemany(
                "INSERT INTO search VALUES (?,?,?,?)",
                [(value, name, s.trace_id, s.start_ns) for s in spans for value, name in _searched_values(s)],
            )

    def prune(self, older_than_s: float) -> int:
        """Deletes the spans that started more than ``older_than_s`` ago; returns how many."""
        cutoff = time.time_ns() - int(older_than_s * 1e9)
        with self._db:
            gone = self._db.execute("DELETE FROM spans WHERE start_ns < ?", (cutoff,)).rowcount
            self._db.execute("DELETE FROM search WHERE start_ns < ?", (cutoff,))
            self._db.execute(
                "DELETE FROM links WHERE NOT EXISTS "
                "(SELECT 1 FROM spans s WHERE s.trace_id = links.trace_id AND s.span_id = links.span_id)"
            )
        return int(gone)

    # --- reading -----------------------------------------------------------------------------

    def find(self, text: str) -> list[TraceSummary]:
        """The traces ``text`` names, oldest first: a trace id, an id the spans carry, or the first
        hex digits (six or more) of a trace id."""
        wanted = text.strip()
        lowered = wanted.lower()
        ids: list[str] = []
        if _TRACE_ID.fullmatch(lowered) and self._exists(lowered):
            ids = [lowered]
        if not ids:
            rows = self._db.execute(
                "SELECT trace_id FROM search WHERE value = ? GROUP BY trace_id ORDER BY MIN(start_ns)",
                (wanted,),
            )
            ids = [r[0] for r in rows]
        if not ids and _HEX_PREFIX.fullmatch(lowered):
            rows = self._db.execute(
                "SELECT DISTINCT trace_id FROM spans WHERE trace_id LIKE ?", (lowered + "%",)
            )
            ids = [r[0] for r in rows]
        return sorted((self.summary(i) for i in ids), key=lambda s: s.start_ns)

    def recent(self, limit: int = 20) -> list[TraceSummary]:
        """The ``limit`` latest traces that carry a searched attribute (a change), oldest first."""
        rows = self._db.execute(
            "SELECT trace_id FROM search GROUP BY trace_id ORDER BY MAX(start_ns) DESC LIMIT ?", (limit,)
        )
        return sorted((self.summary(r[0]) for r in rows), key=lambda s: s.start_ns)

    def summary(self, trace_id: str) -> TraceSummary:
        """The summary of the trace ``trace_id``."""
        spans = self._spans(trace_id)
        ids = {s.span_id for s in spans}
        roots = [s for s in spans if s.parent_span_id not in ids] or spans
        root = min(roots, key=lambda s: s.start_ns)
        return TraceSummary(
            trace_id=trace_id,
            start_ns=min(s.start_ns for s in spans),
            end_ns=max(s.end_ns for s in spans),
            span_count=len(spans),
            services=tuple(sorted({s.service for s in spans})),
            root=f"{root.service.removeprefix('hubsync-')} {root.name}",
            errors=sum(s.failed for s in spans),
        )

    def trace(self, trace_id: str) -> TraceSpans:
        """The trace's spans, with the spans of other traces that link into it and their
        descendants (the HubSpot call that carried this trace's record in a batch)."""
        result = TraceSpans(trace_id, self._spans(trace_id))
        own = {s.span_id for s in result.spans}
        linking = self._db.execute(
            "SELECT DISTINCT trace_id, span_id, linked_span_id FROM links "
            "WHERE linked_trace_id = ? AND trace_id != ?",
            (trace_id, trace_id),
        ).fetchall()
        by_trace: dict[str, list[tuple[str, str]]] = {}
        for other_trace, span_id, target in linking:
            if target in own:
                by_trace.setdefault(other_trace, []).append((span_id, target))
        for other_trace, pairs in by_trace.items():
            others = self._spans(other_trace)
            children: dict[str, list[StoredSpan]] = {}
            for s in others:
                children.setdefault(s.parent_span_id, []).append(s)
            index = {s.span_id: s for s in others}
            for span_id, target in pairs:
                if span_id not in index or span_id in result.linked_to:
                    continue
                result.linked_to[span_id] = target
                stack = [index[span_id]]
                while stack:
                    s = stack.pop()
                    result.spans.append(s)
                    stack.extend(children.get(s.span_id, []))
        return result

    def _exists(self, trace_id: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM spans WHERE trace_id = ? LIMIT 1", (trace_id,)).fetchone()
            is not None
        )

    def _spans(self, trace_id: str) -> list[StoredSpan]:
        rows = self._db.execute("SELECT * FROM spans WHERE trace_id = ? ORDER BY start_ns", (trace_id,))
        return [
            StoredSpan(
                trace_id=r[0],
                span_id=r[1],
                parent_span_id=r[2],
                service=r[3],
                name=r[4],
                kind=r[5],
                start_ns=r[6],
                end_ns=r[7],
                status_code=r[8],
                status_message=r[9],
                attributes=json.loads(r[10]),
                events=json.loads(r[11]),
                links=tuple(tuple(link) for link in json.loads(r[12])),
            )
            for r in rows
        ]
