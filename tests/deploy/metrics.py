"""The metric names the services really export, for checks of whatever names metrics (alert
rules, dashboards, docs): derived from the instruments in the code the way OpenTelemetry's
Prometheus exporter derives them (dots → underscores, ``_seconds`` for unit ``s``, ``_total`` for
counters)."""

from __future__ import annotations

import functools
import re

from tests.deploy.chart import ROOT

_INSTRUMENT = re.compile(
    r"create_(?P<kind>counter|histogram|gauge|observable_gauge|up_down_counter|observable_counter)"
    r"\(\s*\"(?P<name>hubsync\.[a-z_.]+)\"(?P<rest>[^)]*)\)",
    re.DOTALL,
)
_SUFFIXES = ("_bucket", "_count", "_sum")
_NAME = re.compile(r"hubsync_[a-z_]+")


@functools.cache
def exported_names() -> frozenset[str]:
    names: set[str] = set()
    for path in [*(ROOT / "libs").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        for m in _INSTRUMENT.finditer(path.read_text()):
            name = m["name"].replace(".", "_")
            if re.search(r"unit=\"s\"", m["rest"]):
                name += "_seconds"
            if m["kind"] in ("counter", "observable_counter"):
                name += "_total"
            names.add(name)
    return frozenset(names)


def base_name(name: str) -> str:
    """A histogram's series name without ``_bucket``/``_count``/``_sum``."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and not name.endswith("_total"):
            return name[: -len(suffix)]
    return name


def named_metrics(expr: str) -> set[str]:
    """The hubsync metric names a PromQL expression (or any text) mentions."""
    return set(_NAME.findall(expr))


def unknown_metrics(expr: str) -> set[str]:
    """Metric names in ``expr`` that no service exports."""
    exported = exported_names()
    return {name for name in named_metrics(expr) if base_name(name) not in exported}
