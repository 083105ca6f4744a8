"""``hubsync trace [ID]``: find one change's trace in the local store and show it.

ID is a trace id (or its first hex digits), a HubSpot object id or event id, or the external id
of a pushed record. When several traces carry ID (an object changed more than once), they are
listed and the latest is shown (``--all`` shows each). Without ID, the latest changes are listed.
``--html FILE`` also writes the waterfall as a self-contained HTML page to open in a browser.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from hubsync.cli.trace_store import STORE_FILE, TraceStore
from hubsync.cli.trace_view import render_html, render_list, render_text, waterfall

DEFAULT_WORKDIR = Path(".hubsync")


def trace_command(workdir: Path) -> str:
    """The command that opens a trace of the suite run in ``workdir`` (for the demo's hints)."""
    return "hubsync trace" if workdir == DEFAULT_WORKDIR else f"hubsync trace --workdir {workdir}"


def show_trace(
    console: Console, workdir: Path, ident: str | None, html_out: Path | None, show_all: bool
) -> int:
    """Prints (or writes as HTML) the trace ``ident`` names; returns the exit status."""
    path = workdir / STORE_FILE
    try:
        store = TraceStore(path, readonly=True)
    except FileNotFoundError:
        console.print(
            f"[red]no local trace store at {path}[/]: `hubsync run` collects the suite's spans there "
            "(unless it was given --otlp-endpoint); pass --workdir if it ran elsewhere"
        )
        return 2
    try:
        if not ident:
            recent = store.recent()
            if not recent:
                console.print("no changes traced yet")
                return 1
            console.print("[bold]latest traced changes[/] (hubsync trace <trace id> opens one):")
            for line in render_list(recent):
                console.print(line, highlight=False, soft_wrap=True)
            return 0
        found = store.find(ident)
        if not found:
            console.print(
                f"[red]no trace carries {ident!r}[/] (a trace id, HubSpot object or event id, or an "
                "external id); spans reach the store a fraction of a second after each hop: retry"
            )
            return 1
        shown = found if show_all else found[-1:]
        if len(found) > 1:
            console.print(f"[bold]{len(found)} traces carry {ident}[/] (oldest first):")
            for line in render_list(found):
                console.print(line, highlight=False, soft_wrap=True)
            if not show_all:
                console.print("showing the latest (--all shows each)\n")
        for n, summary in enumerate(shown):
            if n:
                console.print()
            view = waterfall(store.trace(summary.trace_id))
            for line in render_text(view):
                console.print(line, highlight=False, soft_wrap=True)
            if html_out is not None:
                target = (
                    html_out if len(shown) == 1 else html_out.with_stem(f"{html_out.stem}-{summary.trace_id}")
                )
                target.write_text(render_html(view))
                console.print(f"\nHTML waterfall: file://{target.resolve()}", highlight=False, soft_wrap=True)
        return 0
    finally:
        store.close()
