"""Mappings compiled into fast functions, both directions.

Each :class:`~hubsync.mapper.mappings.Mapping` is compiled once (at load and reload) into plain
Python functions generated from the mapping, so transforming a record costs about what a
hand-written dict comprehension costs: no per-field interpretation, no per-field closure call
for plain renames. Names and values from the mapping only ever enter the generated code as
``repr`` literals or as namespace entries, never as code.

Inbound (HubSpot → company): every mapped field is present in the result, ``None`` when HubSpot
has no value (HubSpot's ``""`` means no value) and the field has no default. A value that does
not convert (a number property holding text) is passed through as the raw string rather than
stopping the pipeline. Outbound (company → HubSpot): only fields present in the input are
written; ``None`` clears the property (``""``); a value that does not convert raises
:class:`TransformError` naming the field.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hubsync.mapper.mappings import STAGE_PROPERTIES, FieldMapping, LoadedMapping, Mapping
from hubsync.mapper.objecttypes import CUSTOM_TYPES, STANDARD

__all__ = ["CompiledMapping", "Inbound", "MappingSet", "Outbound", "TransformError", "compile_mapping"]

_DAY_MS = 86_400_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MISSING = object()

Inbound = Callable[[dict[str, str]], dict[str, Any]]
Outbound = Callable[[dict[str, Any]], dict[str, str]]


class TransformError(ValueError):
    """A company value that cannot become a HubSpot value; ``field`` names the company field."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.reason = message


# ---- value conversions -------------------------------------------------------------------------


def _ms(value: str) -> int:
    """Epoch-ms from HubSpot's epoch-ms or ISO-8601 text."""
    if value.isdigit() or (value[:1] == "-" and value[1:].isdigit()):
        return int(value)
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int((parsed - _EPOCH) / dt.timedelta(milliseconds=1))


def number_in(value: str) -> int | float:
    """Return a HubSpot number as an int when it is a whole number (exact), else a float."""
    number = float(value)
    if number.is_integer() and abs(number) < 2**53:
        return int(number)
    return number


def integer_in(value: str) -> int:
    """Return a HubSpot number as an int."""
    return int(float(value))


def bool_in(value: str) -> bool:
    """Return a HubSpot boolean (``true``/``false``) as a bool."""
    low = value.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    raise ValueError(f"{value!r} is not a boolean")


def date_in(value: str) -> str:
    """Return a HubSpot date (ms at midnight UTC) as an ISO date."""
    return (_EPOCH + dt.timedelta(milliseconds=_ms(value))).date().isoformat()


def datetime_in(value: str) -> str:
    """Return a HubSpot datetime (ms) as an ISO datetime in UTC, to the millisecond."""
    moment = _EPOCH + dt.timedelta(milliseconds=_ms(value))
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def string_out(value: Any) -> str:
    """Return a field value as a HubSpot string property value."""
    if value.__class__ is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return number_out(value)
    raise ValueError(f"expected a string, got {type(value).__name__}")


def number_out(value: Any) -> str:
    """Return a field value as a HubSpot number property value."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, str):
        value = float(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    raise ValueError(f"expected a number, got {type(value).__name__}")


def integer_out(value: Any) -> str:
    """Return a field value as a HubSpot integer property value."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return str(int(value))
    raise ValueError(f"expected an integer, got {value!r}")


def bool_out(value: Any) -> str:
    """Return a field value as a HubSpot boolean property value (``true``/``false``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower()
    raise ValueError(f"expected a boolean, got {value!r}")


def date_out(value: Any) -> str:
    """Return a field value (ISO date or ms at midnight UTC) as a HubSpot date value."""
    if isinstance(value, str):
        day = dt.date.fromisoformat(value[:10])
        return str((day - _EPOCH.date()).days * _DAY_MS)
    if isinstance(value, int | float) and not isinstance(value, bool) and int(value) % _DAY_MS == 0:
        return str(int(value))
    raise ValueError(f"expected a date (YYYY-MM-DD), got {value!r}")


def datetime_out(value: Any) -> str:
    """Return a field value (ISO datetime or ms) as a HubSpot datetime value."""
    if isinstance(value, str):
        return str(_ms(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(int(value))
    raise ValueError(f"expected an ISO-8601 datetime, got {value!r}")


def _split_in(delimiter: str) -> Callable[[str], list[str]]:
    def split(value: str) -> list[str]:
        return [part for part in value.split(delimiter) if part]

    return split


def _join_out(delimiter: str) -> Callable[[Any], str]:
    def join(value: Any) -> str:
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        parts = [string_out(v) for v in value]
        for part in parts:
            if delimiter in part or not part:
                raise ValueError(f"list items must be non-empty and must not contain {delimiter!r}")
        return delimiter.join(parts)

    return join


def _enum_in(values: dict[str, Any]) -> Callable[[str], Any]:
    get = values.get

    def enum(value: str) -> Any:
        return get(value, value)

    return enum


def _enum_out(values: dict[str, Any], pipeline: str | None = None) -> Callable[[Any], str]:
    back = {str(v) if not isinstance(v, bool) else ("true" if v else "false"): k for k, v in values.items()}
    get = back.get

    def enum(value: Any) -> str:
        key = string_out(value)
        return get(key, key)

    def stage(value: Any) -> str:
        # A stage of a named pipeline: only mapped stages exist there.
        key = string_out(value)
        found = get(key)
        if found is None:
            raise ValueError(
                f"stage {key!r} has no mapping in pipeline {pipeline!r} (mapped stages: {sorted(back)})"
            )
        return found

    return stage if pipeline is not None else enum


_IN: dict[str, Callable[[str], Any]] = {
    "number": number_in,
    "integer": integer_in,
    "bool": bool_in,
    "date": date_in,
    "datetime": datetime_in,
}
_OUT: dict[str, Callable[[Any], str]] = {
    "string": string_out,
    "number": number_out,
    "integer": integer_out,
    "bool": bool_out,
    "date": date_out,
    "datetime": datetime_out,
}


def _converter_in(f: FieldMapping) -> Callable[[str], Any] | None:
    if f.transform == "split":
        return _split_in(f.delimiter)
    if f.transform == "enum":
        return _enum_in(dict(f.values or {}))
    return _IN.get(f.transform)


def _converter_out(f: FieldMapping) -> Callable[[Any], str]:
    if f.transform == "split":
        return _join_out(f.delimiter)
    if f.transform == "enum":
        return _enum_out(dict(f.values or {}), f.pipeline)
    return _OUT[f.transform]


# ---- code generation ---------------------------------------------------------------------------


def _compile_inbound(mapping: Mapping) -> Inbound:
    ns: dict[str, Any] = {}
    lines = ["def inbound(p):", "    g = p.get", "    out = {}"]
    nested: dict[str, str] = {}

    def target(path: str) -> str:
        parts = path.split(".")
        holder = "out"
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            if prefix not in nested:
                nested[prefix] = f"n{len(nested)}"
                lines.append(f"    {nested[prefix]} = {{}}")
                lines.append(f"    {holder}[{parts[depth - 1]!r}] = {nested[prefix]}")
            holder = nested[prefix]
        return f"{holder}[{parts[-1]!r}]"

    for i, f in enumerate(mapping.fields):
        dest = target(f.external)
        default = f"d{i}"
        ns[default] = f.default
        if isinstance(f.hubspot, list):
            getters = ", ".join(f"g({p!r})" for p in f.hubspot)
            ns[f"s{i}"] = f.separator
            lines.append(f"    v = [x for x in ({getters}) if x]")
            lines.append(f"    {dest} = s{i}.join(v) if v else {default}")
            continue
        lines.append(f"    v = g({f.hubspot!r})")
        conv = _converter_in(f)
        if conv is None:
            lines.append(f"    {dest} = v if v else {default}")
            continue
        ns[f"c{i}"] = conv
        lines += [
            "    if v:",
            "        try:",
            f"            {dest} = c{i}(v)",
            "        except (ValueError, TypeError, OverflowError):",
            f"            {dest} = v",
            "    else:",
            f"        {dest} = {default}",
        ]
    lines.append("    return out")
    exec(compile("\n".join(lines), f"<mapping {mapping.object_type} inbound>", "exec"), ns)  # noqa: S102
    return ns["inbound"]  # type: ignore[no-any-return]


def _compile_outbound(mapping: Mapping, owned_only: bool) -> Outbound:
    ns: dict[str, Any] = {"M": _MISSING, "TE": TransformError, "str": str}
    lines = ["def outbound(r):", "    out = {}"]
    groups: dict[str, str] = {}
    for i, f in enumerate(mapping.fields):
        if not f.writable or (owned_only and f.owner == "hubspot"):
            continue
        parts = f.external.split(".")
        source = "r"
        indent = "    "
        if len(parts) > 1:
            # Nested company fields: read the parent dict once per field (cheap, and tolerant of
            # a missing or non-object parent).
            parent = ".".join(parts[:-1])
            if parent not in groups:
                groups[parent] = f"p{len(groups)}"
                lines.append(f"    {groups[parent]} = r")
                for part in parts[:-1]:
                    lines.append(
                        f"    {groups[parent]} = {groups[parent]}.get({part!r}) "
                        f"if {groups[parent]}.__class__ is dict else None"
                    )
            source = groups[parent]
            lines.append(f"    if {source}.__class__ is dict:")
            indent = "        "
        prop = str(f.hubspot)
        lines.append(f"{indent}v = {source}.get({parts[-1]!r}, M)")
        lines.append(f"{indent}if v is not M:")
        body = indent + "    "
        lines.append(f"{body}if v is None:")
        lines.append(f"{body}    out[{prop!r}] = ''")
        if f.transform == "string":
            lines.append(f"{body}elif v.__class__ is str:")
            lines.append(f"{body}    out[{prop!r}] = v")
        ns[f"c{i}"] = _converter_out(f)
        lines += [
            f"{body}else:",
            f"{body}    try:",
            f"{body}        out[{prop!r}] = c{i}(v)",
            f"{body}    except (ValueError, TypeError, OverflowError) as e:",
            f"{body}        raise TE({f.external!r}, str(e)) from None",
        ]
        if f.pipeline is not None:
            # The stage's pipeline goes with it (HubSpot checks the stage against it).
            lines.append(f"{body}    out[{STAGE_PROPERTIES[prop]!r}] = {f.pipeline!r}")
    lines.append("    return out")
    exec(compile("\n".join(lines), f"<mapping {mapping.object_type} outbound>", "exec"), ns)  # noqa: S102
    return ns["outbound"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class CompiledMapping:
    """One object type's mapping, compiled."""

    mapping: Mapping
    source: str
    inbound: Inbound
    outbound_all: Outbound
    outbound_owned: Outbound
    # HubSpot properties to read when hydrating (the id property included).
    read_properties: tuple[str, ...]
    # HubSpot property → company fields it feeds (for a change's changed_fields).
    fields_of_property: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def object_type(self) -> str:
        """The HubSpot object type this mapping maps."""
        return self.mapping.object_type

    @property
    def id_property(self) -> str:
        """The HubSpot property that holds the external id."""
        return self.mapping.id.hubspot

    @property
    def external_id_field(self) -> str:
        """The external field that holds the record's id."""
        return self.mapping.id.external

    def to_external(self, properties: dict[str, str]) -> tuple[str, dict[str, Any]]:
        """HubSpot properties → (external id, company fields)."""
        return properties.get(self.mapping.id.hubspot) or "", self.inbound(properties)

    def to_hubspot(self, external_id: str, fields: dict[str, Any], *, owned_only: bool) -> dict[str, str]:
        """Company fields → HubSpot properties (the id property included when ``external_id``)."""
        props = (self.outbound_owned if owned_only else self.outbound_all)(fields)
        if external_id:
            props[self.mapping.id.hubspot] = external_id
        return props


def compile_mapping(loaded: LoadedMapping) -> CompiledMapping:
    """Compiles one loaded mapping."""
    mapping = loaded.mapping
    props: dict[str, None] = {mapping.id.hubspot: None}
    fields_of: dict[str, list[str]] = {}
    for f in mapping.fields:
        for p in f.properties:
            props[p] = None
            fields_of.setdefault(p, []).append(f.external)
    return CompiledMapping(
        mapping=mapping,
        source=loaded.source,
        inbound=_compile_inbound(mapping),
        outbound_all=_compile_outbound(mapping, owned_only=False),
        outbound_owned=_compile_outbound(mapping, owned_only=True),
        read_properties=tuple(props),
        fields_of_property={k: tuple(v) for k, v in fields_of.items()},
    )


class MappingSet:
    """The compiled mappings in force, by object type (immutable; reload builds a new one)."""

    def __init__(self, loaded: list[LoadedMapping]):
        self.by_type: dict[str, CompiledMapping] = {}
        for item in loaded:
            self.by_type[item.mapping.object_type] = compile_mapping(item)

    def overlay(self, loaded: list[LoadedMapping]) -> MappingSet:
        """A new set: these mappings replace this set's mappings of their object types (the
        others are shared, not compiled again)."""
        merged = MappingSet([])
        merged.by_type = {**self.by_type, **MappingSet(loaded).by_type}
        return merged

    def get(self, object_type: str) -> CompiledMapping | None:
        """Return the mapping of an object type (by name, singular name or type id), or None."""
        found = self.by_type.get(object_type)
        if found is None:
            # A custom object named by its type id (inbound events), or a standard type by a
            # singular name or 0-… id.
            alias = CUSTOM_TYPES.name_of(object_type) or STANDARD.get(object_type)
            found = self.by_type.get(alias) if alias else None
        return found

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.by_type.values())
