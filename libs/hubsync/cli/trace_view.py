"""One trace as a waterfall: in the terminal (``hubsync trace``) and as a static HTML page.

:func:`waterfall` orders a trace's spans as a tree (children under their parent, by start
time). Spans of other traces that link into this one (writer's batched HubSpot call carrying
this trace's record) hang under the span they link to, marked ``link``; a consumer span, a child
that starts after its parent ended, or one under a producer span crossed a Redis stream and is
marked ``redis``.
Each row shows the service, the span, its start offset from the trace's first span, its duration
as a bar, its key attributes and its errors.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hubsync.cli.trace_store import KIND_NAMES, StoredSpan, TraceSpans

BAR_WIDTH = 40
_PRODUCER, _CONSUMER = 4, 5
# Attributes shown beside a span (besides every ``hubsync.*`` one), with a shorter name.
_SHOWN = {
    "http.status_code": "status",
    "http.response.status_code": "status",
    "http.request.method": "method",
    "url.full": "url",
    "http.url": "url",
    "url.path": "path",
    "rpc.grpc.status_code": "grpc_status",
}
_GRPC_CODES = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
]  # fmt: skip
SERVICE_COLOURS = {
    "ingress": "#2f6fde",
    "mapper": "#1e9e5a",
    "writer": "#e07b00",
    "auth": "#8a4fd3",
}
_OTHER_COLOUR = "#7a7a7a"
_VIA = {"redis": "after a Redis stream", "link": "linked: carries this trace's record"}
_RICH_COLOURS = {"ingress": "blue", "mapper": "green", "writer": "dark_orange", "auth": "magenta"}


@dataclass(frozen=True)
class Row:
    """One line of a waterfall: a span, its depth in the tree and how it was reached."""

    span: StoredSpan
    depth: int
    via: str  # "", "link" (a span of another trace linking here) or "redis" (a stream hop)
    guide: str  # the tree's drawing before the name

    @property
    def service(self) -> str:
        """The span's service, without the ``hubsync-`` prefix."""
        return self.span.service.removeprefix("hubsync-")

    @property
    def name(self) -> str:
        """The span's name as displayed."""
        return display_name(self.span)


@dataclass(frozen=True)
class Waterfall:
    """A trace laid out as rows in tree order, with the time span they cover."""

    trace_id: str
    rows: list[Row]
    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        """The waterfall's duration in nanoseconds (at least 1)."""
        return max(self.end_ns - self.start_ns, 1)

    @property
    def services(self) -> list[str]:
        """The services that appear in the waterfall, sorted."""
        return sorted({r.service for r in self.rows})

    def offset_ms(self, row: Row) -> float:
        """Milliseconds from the waterfall's start to ``row``'s start."""
        return (row.span.start_ns - self.start_ns) / 1e6


def short_name(name: str) -> str:
    """``/hubsync.api.writer.v1.WriterService/SubmitWrites`` → ``WriterService/SubmitWrites``."""
    if name.startswith("/") and "/" in name[1:]:
        service, method = name[1:].rsplit("/", 1)
        return f"{service.rsplit('.', 1)[-1]}/{method}"
    return name


def display_name(span: StoredSpan) -> str:
    """The span's short name and, for a span between processes, its kind."""
    name = short_name(span.name)
    kind = KIND_NAMES.get(span.kind, "")
    return f"{name} ({kind})" if kind in ("server", "client", "producer", "consumer") else name


def key_attributes(span: StoredSpan) -> list[tuple[str, str]]:
    """The attributes worth a glance: every ``hubsync.*`` one, statuses, the request's URL."""
    out: list[tuple[str, str]] = []
    for name, value in span.attributes.items():
        if name.startswith("hubsync."):
            out.append((name.removeprefix("hubsync."), _short(value)))
    for name, label in _SHOWN.items():
        value = span.attributes.get(name)
        if value is None or any(existing == label for existing, _ in out):
            continue
        if name == "rpc.grpc.status_code":
            if value == 0:
                continue
            value = _GRPC_CODES[value] if isinstance(value, int) and 0 <= value < len(_GRPC_CODES) else value
        out.append((label, _short(value)))
    return out


def errors(span: StoredSpan) -> list[str]:
    """What went wrong in ``span``: its error status and its exception events."""
    out = []
    if span.failed:
        out.append(f"ERROR {span.status_message}".rstrip())
    for event in span.events:
        if event.get("name") == "exception":
            attrs = event.get("attributes", {})
            out.append(f"{attrs.get('exception.type', 'exception')}: {attrs.get('exception.message', '')}")
    return out


def _short(value: Any) -> str:
    if isinstance(value, list):
        shown = ", ".join(str(v) for v in value[:5])
        more = f", … {len(value)} in all" if len(value) > 5 else ""
        return f"[{shown}{more}]"
    return str(value)


def waterfall(found: TraceSpans) -> Waterfall:
    """Lays out ``found``'s spans as a waterfall: parents before children, by start time."""
    spans = found.spans
    ids = {s.span_id for s in spans}
    children: dict[str, list[StoredSpan]] = {}
    roots: list[StoredSpan] = []
    for s in spans:
        parent = found.linked_to.get(s.span_id) or s.parent_span_id
        if parent and parent in ids and parent != s.span_id:
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)
    by_id = {s.span_id: s for s in spans}
    rows: list[Row] = []

    def visit(span: StoredSpan, depth: int, lead: str, last: bool) -> None:
        parent = by_id.get(found.linked_to.get(span.span_id) or span.parent_span_id)
        via = ""
        if span.span_id in found.linked_to:
            via = "link"
        elif parent is not None and (
            span.kind == _CONSUMER or parent.kind == _PRODUCER or span.start_ns >= parent.end_ns
        ):
            via = "redis"
        guide = "" if depth == 0 else lead + ("└─ " if last else "├─ ")
        rows.append(Row(span, depth, via, guide))
        kids = sorted(children.get(span.span_id, []), key=lambda s: s.start_ns)
        below = "" if depth == 0 else lead + ("   " if last else "│  ")
        for n, kid in enumerate(kids):
            visit(kid, depth + 1, below, n == len(kids) - 1)

    for root in sorted(roots, key=lambda s: s.start_ns):
        visit(root, 0, "", True)
    start = min((s.start_ns for s in spans), default=0)
    end = max((s.end_ns for s in spans), default=start)
    return Waterfall(found.trace_id, rows, start, end)


def _stamp(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def headline(w: Waterfall) -> str:
    """The one-line title of a waterfall: trace id, span counts, duration."""
    own = sum(1 for r in w.rows if r.span.trace_id == w.trace_id)
    linked = len(w.rows) - own
    extra = f" + {linked} linked" if linked else ""
    return (
        f"trace {w.trace_id} · {own} spans{extra} · {', '.join(w.services)} · "
        f"{_ms(w.end_ns - w.start_ns)} · started {_stamp(w.start_ns)}"
    )


# --- terminal --------------------------------------------------------------------------------


def _bar(w: Waterfall, row: Row, width: int = BAR_WIDTH) -> str:
    left = int((row.span.start_ns - w.start_ns) * width / w.duration_ns)
    length = max(1, round((row.span.end_ns - row.span.start_ns) * width / w.duration_ns))
    left = min(left, width - 1)
    length = min(length, width - left)
    return " " * left + "█" * length + " " * (width - left - length)


def _label(row: Row) -> str:
    return row.guide + row.name + (f" ⇢{row.via}" if row.via else "")


def render_text(w: Waterfall, *, max_name_width: int = 84) -> list[str]:
    """The waterfall as lines with rich markup (one line a span, attributes and errors below)."""
    name_width = min(max((len(_label(r)) for r in w.rows), default=4), max_name_width)
    lines = [f"[bold]{headline(w)}[/]"]
    scale = f"0 ms{_ms(w.duration_ns).rjust(BAR_WIDTH - 4)}"
    lines.append(f"{'service':8} {'span':{name_width}} {'start':>9} {'duration':>9}  {scale}")
    for row in w.rows:
        label = _label(row)
        if len(label) > name_width:
            label = label[: name_width - 1] + "…"
        colour = _RICH_COLOURS.get(row.service, "white")
        failed = bool(errors(row.span))
        bar_colour = "red" if failed else colour
        lines.append(
            f"[{colour}]{row.service:8}[/] {_escape(label):{name_width}} "
            f"{w.offset_ms(row):>6.1f} ms {(row.span.end_ns - row.span.start_ns) / 1e6:>6.1f} ms  "
            f"[{bar_colour}]{_bar(w, row)}[/]"
        )
        pad = " " * (9 + len(row.guide))
        attrs = key_attributes(row.span)
        if row.via == "link":
            attrs.insert(0, ("trace", row.span.trace_id))
        if attrs:
            lines.append(f"[dim]{pad}{_escape(' '.join(f'{k}={v}' for k, v in attrs))}[/]")
        for problem in errors(row.span):
            lines.append(f"[red]{pad}✗ {_escape(problem)}[/]")
    return lines


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


# --- HTML --------------------------------------------------------------------------------------

_CSS = """
body { font: 13px/1.35 system-ui, sans-serif; margin: 16px; color: #1d1d1f; background: #fff; }
h1 { font-size: 16px; margin: 0 0 4px; } .meta { color: #555; margin-bottom: 12px; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th { text-align: left; font-weight: 600; color: #555; border-bottom: 1px solid #ccc; padding: 4px; }
td { vertical-align: top; padding: 3px 4px; border-bottom: 1px solid #eee; }
td.svc { width: 70px; font-weight: 600; } td.num { width: 74px; text-align: right; color: #444; }
col.name { width: 46%; } .name { white-space: pre; font-family: ui-monospace, monospace; overflow: hidden;
  text-overflow: ellipsis; }
.attrs { color: #666; font-size: 11px; white-space: normal; font-family: ui-monospace, monospace; }
.err { color: #c62828; font-size: 12px; } .via { font-size: 11px; padding: 0 4px; margin-left: 4px;
  border-radius: 3px; background: #eef; color: #334; }
.track { position: relative; height: 14px; background: #f4f4f6; border-radius: 2px; margin-top: 2px; }
.bar { position: absolute; top: 0; height: 14px; min-width: 2px; border-radius: 2px; }
.bar.failed { background: #c62828 !important; }
"""


def render_html(w: Waterfall) -> str:
    """A self-contained page (no script, no external resource): the same waterfall in a browser."""
    colours = {s: SERVICE_COLOURS.get(s, _OTHER_COLOUR) for s in w.services}
    legend = "".join(
        f'<span><i style="background:{c}"></i>{html.escape(s)}</span>' for s, c in colours.items()
    )
    body = []
    for row in w.rows:
        span = row.span
        left = (span.start_ns - w.start_ns) * 100 / w.duration_ns
        width = (span.end_ns - span.start_ns) * 100 / w.duration_ns
        failed = " failed" if errors(span) else ""
        via = f'<span class="via">{_VIA[row.via]}</span>' if row.via else ""
        attrs = key_attributes(span)
        if row.via == "link":
            attrs.insert(0, ("trace", span.trace_id))
        attr_text = " ".join(f"{k}={v}" for k, v in attrs)
        problems = "".join(f'<div class="err">✗ {html.escape(p)}</div>' for p in errors(span))
        body.append(
            f'<tr data-span="{span.span_id}" data-parent="{span.parent_span_id}" data-via="{row.via}">'
            f'<td class="svc" style="color:{colours[row.service]}">{html.escape(row.service)}</td>'
            f'<td><div class="name">{html.escape(row.guide + row.name)}{via}</div>'
            f'<div class="attrs" style="padding-left:{len(row.guide)}ch">{html.escape(attr_text)}</div>'
            f"{problems}</td>"
            f'<td class="num">{w.offset_ms(row):.1f} ms</td>'
            f'<td class="num">{(span.end_ns - span.start_ns) / 1e6:.1f} ms</td>'
            f'<td><div class="track"><div class="bar{failed}" style="left:{left:.3f}%;'
            f'width:{width:.3f}%;background:{colours[row.service]}"></div></div></td></tr>'
        )
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>hubsync trace {w.trace_id}</title><style>{_CSS}</style></head><body>"
        f"<h1>hubsync trace {w.trace_id}</h1>"
        f'<div class="meta">{html.escape(headline(w))}</div><div class="legend">{legend}</div>'
        '<table><colgroup><col style="width:70px"><col class="name"><col style="width:74px">'
        '<col style="width:74px"><col></colgroup>'
        "<tr><th>service</th><th>span</th><th>start</th><th>duration</th>"
        f"<th>0 ms … {_ms(w.duration_ns)}</th></tr>" + "".join(body) + "</table></body></html>\n"
    )


def render_list(summaries: Sequence[Any]) -> list[str]:
    """Matching traces, one a line (for an id several changes share)."""
    lines = []
    for s in summaries:
        service, _, name = s.root.partition(" ")
        flag = f" [red]{s.errors} errors[/]" if s.errors else ""
        lines.append(
            f"{s.trace_id}  {_stamp(s.start_ns)}  {_ms(s.end_ns - s.start_ns):>10}  "
            f"{s.span_count:>3} spans  {service} {_escape(short_name(name))}{flag}"
        )
    return lines
