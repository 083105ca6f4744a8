"""The mapping format: YAML files validated by pydantic, with errors naming file, line and path.

A file holds one mapping (one object type) or ``mappings: [...]`` with several::

    object_type: contacts
    id: {external: external_id, hubspot: external_id}   # company id field ↔ unique property
    fields:
      - {hubspot: properties.firstname, external: first_name}          # rename
      - {hubspot: properties.city, external: address.city}             # flatten / nest
      - {hubspot: properties.hs_additional_emails, external: emails, transform: split, delimiter: ";"}
      - {hubspot: properties.hs_email_optout, external: opted_out, transform: bool}
      - {hubspot: properties.date_of_birth, external: birth_date, transform: date}
      - {hubspot: properties.dealstage, external: stage, transform: enum, values: {closedwon: won}}
      - {hubspot: [properties.firstname, properties.lastname], external: full_name, separator: " "}
      - {hubspot: properties.lifecyclestage, external: stage, owner: hubspot, default: lead}
    associations:
      - {external: company_id, to: companies}   # field holding the other record's external id
      - {external: billing_id, to: companies, label: Billing contact}   # a labelled association

``object_type`` is any standard type (``tickets``, ``line_items``, ``notes``, …) or a custom
object's schema name (``subscription``). A stage field may name its ``pipeline``: its ``values``
then are that pipeline's stages, the pipeline property is written with the stage, and a stage
with no mapping is refused naming pipeline and stage.

``owner`` says who may change a field: ``hubspot`` (pushes never write it), ``external`` or
``both`` (default). A list of HubSpot properties is a concatenation: inbound only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hubsync.mapper.objecttypes import STANDARD_IDS, canonical_name

__all__ = [
    "CORE_TYPES",
    "STAGE_PROPERTIES",
    "STANDARD_TYPES",
    "WRITE_ORDER",
    "AssociationMapping",
    "FieldMapping",
    "IdPair",
    "LoadedMapping",
    "Mapping",
    "MappingError",
    "MappingFile",
    "directory_stamp",
    "json_schema",
    "load_directory",
    "parse_mappings",
]

# The standard object types; custom objects are mapped by schema name.
STANDARD_TYPES = tuple(STANDARD_IDS)
# What a change-feed subscription that names no types reads.
CORE_TYPES = ("companies", "contacts", "deals")
# Writes are ordered by writer (the graph of their associations); this only makes the order of
# one push's writes stable.
WRITE_ORDER = {"companies": 0, "contacts": 1, "deals": 2}
# Stage property → the pipeline property of the same record.
STAGE_PROPERTIES = {"dealstage": "pipeline", "hs_pipeline_stage": "hs_pipeline"}

TransformName = Literal["string", "number", "integer", "bool", "date", "datetime", "split", "enum"]
Owner = Literal["hubspot", "external", "both"]

_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def _check_path(value: str, what: str) -> str:
    if not value or not set(value) <= _PATH_CHARS or value.startswith(".") or value.endswith("."):
        raise ValueError(f"{what} {value!r} must be a dotted name of letters, digits, '_' or '-'")
    return value


def hubspot_property(path: str) -> str:
    """``properties.firstname`` → ``firstname`` (the prefix is optional in files)."""
    return path[len("properties.") :] if path.startswith("properties.") else path


class IdPair(BaseModel):
    """The company's id field and the HubSpot unique property it maps to."""

    model_config = ConfigDict(extra="forbid")

    external: str = Field(description="The company's id field (a top-level field name).")
    hubspot: str = Field(description="HubSpot's unique property (hasUniqueValue, or email for contacts).")

    @field_validator("external", "hubspot")
    @classmethod
    def _names(cls, v: str) -> str:
        return hubspot_property(_check_path(v, "id"))


class FieldMapping(BaseModel):
    """One mapped field."""

    model_config = ConfigDict(extra="forbid")

    hubspot: str | list[str] = Field(
        description="HubSpot property (`properties.` prefix optional); a list concatenates (inbound only)."
    )
    external: str = Field(description="The company's field; dots nest (`address.city`).")
    transform: TransformName = Field(default="string", description="How values convert.")
    owner: Owner = Field(default="both", description="Who may change the field.")
    delimiter: str = Field(default=";", min_length=1, description="For split: HubSpot's list delimiter.")
    separator: str = Field(default=" ", description="For concatenation: what joins the values.")
    values: dict[str, str | int | float | bool] | None = Field(
        default=None, description="For enum: HubSpot value → company value."
    )
    default: Any = Field(default=None, description="Inbound value when HubSpot has none.")
    pipeline: str | None = Field(
        default=None,
        description="For a stage (dealstage, hs_pipeline_stage) with transform enum: the pipeline id "
        "its values belong to; written with the stage; unmapped stages are refused.",
    )

    @field_validator("hubspot")
    @classmethod
    def _props(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            if len(v) < 2:
                raise ValueError("a concatenation needs at least two properties")
            return [hubspot_property(_check_path(p, "property")) for p in v]
        return hubspot_property(_check_path(v, "property"))

    @field_validator("external")
    @classmethod
    def _ext(cls, v: str) -> str:
        return _check_path(v, "field")

    @model_validator(mode="after")
    def _consistent(self) -> FieldMapping:
        if self.transform == "enum":
            if not self.values:
                raise ValueError("transform enum needs `values` (HubSpot value → company value)")
            back = [str(v) for v in self.values.values()]
            if len(set(back)) != len(back):
                raise ValueError("enum `values` must map to distinct company values, or pushes are ambiguous")
        elif self.values is not None:
            raise ValueError("`values` only applies to transform enum")
        if isinstance(self.hubspot, list) and self.transform != "string":
            raise ValueError("a concatenation produces a string: leave transform unset")
        if self.pipeline is not None and (self.transform != "enum" or self.hubspot not in STAGE_PROPERTIES):
            raise ValueError(
                f"`pipeline` applies to a stage property ({', '.join(STAGE_PROPERTIES)}) with transform enum"
            )
        return self

    @property
    def properties(self) -> list[str]:
        """The HubSpot properties of this field (one, or several for a split field)."""
        return list(self.hubspot) if isinstance(self.hubspot, list) else [self.hubspot]

    @property
    def writable(self) -> bool:
        """Whether outbound transforms produce this field (concatenations are one-way)."""
        return not isinstance(self.hubspot, list)


class AssociationMapping(BaseModel):
    """An association written when a pushed record names the other record's external id."""

    model_config = ConfigDict(extra="forbid")

    external: str = Field(description="The company's field holding the other record's external id.")
    to: str = Field(description="The other record's object type (standard, or a custom object's name).")
    association_type_id: int = Field(default=0, ge=0, description="0: HubSpot's default for the pair.")
    label: str = Field(default="", description="An association label of the pair (instead of a type id).")

    @field_validator("external")
    @classmethod
    def _ext(cls, v: str) -> str:
        return _check_path(v, "field")

    @field_validator("to")
    @classmethod
    def _to(cls, v: str) -> str:
        return canonical_name(v)


class Mapping(BaseModel):
    """The mapping of one object type."""

    model_config = ConfigDict(extra="forbid")

    object_type: str = Field(description="A standard object type or a custom object's schema name.")
    id: IdPair
    fields: list[FieldMapping] = Field(min_length=1)
    associations: list[AssociationMapping] = Field(default_factory=list)
    deletes: Literal["never", "owned", "any"] = Field(
        default="never",
        description="Which pushed deletions archive the HubSpot record: none, only records hubsync "
        "created (owned), or any.",
    )

    @field_validator("object_type")
    @classmethod
    def _type(cls, v: str) -> str:
        return canonical_name(v)

    @model_validator(mode="after")
    def _unique(self) -> Mapping:
        seen: set[str] = {self.id.external}
        for f in self.fields:
            if f.external in seen or any(f.external.startswith(s + ".") for s in seen):
                raise ValueError(f"company field {f.external!r} is mapped twice")
            seen.add(f.external)
        written: set[str] = {self.id.hubspot}
        for f in self.fields:
            if f.writable and f.owner != "hubspot":
                if f.hubspot in written:
                    raise ValueError(f"HubSpot property {f.hubspot!r} is written by two fields")
                written.add(str(f.hubspot))
        return self


class MappingFile(BaseModel):
    """A file with several mappings."""

    model_config = ConfigDict(extra="forbid")

    mappings: list[Mapping] = Field(min_length=1)


# Pydantic puts the union member tried into an error's location; they are not paths of the file.
_UNION_TAGS = ("literal[", "str", "list[", "dict[", "int", "float", "bool")


class MappingError(Exception):
    """A mapping file is invalid; ``errors`` are lines ``<file>:<line>: <path>: <what is wrong>``."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class LoadedMapping:
    """A mapping and the file it came from."""

    mapping: Mapping
    source: str


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a mapping file (for editors; `hubsync mapping schema`)."""
    one = Mapping.model_json_schema()
    many = MappingFile.model_json_schema()
    defs = {**one.pop("$defs", {}), **many.pop("$defs", {})}
    defs["Mapping"] = one
    many["properties"]["mappings"]["items"] = {"$ref": "#/$defs/Mapping"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hubsync mapping file",
        "anyOf": [{"$ref": "#/$defs/Mapping"}, {"$ref": "#/$defs/MappingFile"}],
        "$defs": {**defs, "MappingFile": many},
    }


def _line_of(node: yaml.Node | None, loc: Iterable[int | str]) -> int | None:
    """The 1-based line of the YAML node at pydantic location ``loc`` (nearest existing parent)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    nxt = value
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def parse_mappings(text: str, source: str) -> list[Mapping]:
    """Parses one file's YAML into mappings; raises :class:`MappingError` naming what is wrong."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise MappingError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise MappingError([f"{source}:1: a mapping file must be a YAML mapping (object_type, id, fields)"])
    try:
        if "mappings" in data:
            return MappingFile.model_validate(data).mappings
        return [Mapping.model_validate(data)]
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(_UNION_TAGS))]
            path = ".".join(str(p) for p in loc) or "(top)"
            line = _line_of(node, loc)
            where = f"{source}:{line}" if line else source
            msg = err["msg"].removeprefix("Value error, ")
            errors.append(f"{where}: {path}: {msg}")
        raise MappingError(errors) from None


def load_directory(directory: Path) -> list[LoadedMapping]:
    """Loads every ``*.yaml``/``*.yml`` file of ``directory``; one object type may appear once.

    Raises :class:`MappingError` with every problem of every file.
    """
    if not directory.is_dir():
        raise MappingError([f"{directory}: mappings directory does not exist"])
    loaded: list[LoadedMapping] = []
    errors: list[str] = []
    by_type: dict[str, str] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            for mapping in parse_mappings(path.read_text(), str(path)):
                if mapping.object_type in by_type:
                    errors.append(
                        f"{path}: object_type: {mapping.object_type} is already mapped in "
                        f"{by_type[mapping.object_type]}"
                    )
                    continue
                by_type[mapping.object_type] = str(path)
                loaded.append(LoadedMapping(mapping, str(path)))
        except MappingError as exc:
            errors.extend(exc.errors)
    if errors:
        raise MappingError(errors)
    if not loaded:
        raise MappingError([f"{directory}: no mapping files (*.yaml)"])
    return loaded


def directory_stamp(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a file of ``directory`` changes (names, sizes, mtimes): for hot reload."""
    try:
        files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
        return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    except OSError:
        return ()
