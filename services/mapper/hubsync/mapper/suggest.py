"""Proposes a mapping from an external schema by matching names, labels and types."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import yaml

from hubsync.api.writer.v1 import writer_pb2

__all__ = ["suggest"]

_ID_NAMES = ("external_id", "id", "uuid", "key")
# Common company-side names for HubSpot's default properties.
_SYNONYMS = {
    "givenname": "firstname",
    "surname": "lastname",
    "familyname": "lastname",
    "emailaddress": "email",
    "mail": "email",
    "phonenumber": "phone",
    "telephone": "phone",
    "mobile": "mobilephone",
    "title": "jobtitle",
    "postalcode": "zip",
    "postcode": "zip",
    "zipcode": "zip",
    "street": "address",
    "companyname": "company",
    "organization": "company",
    "employees": "numberofemployees",
    "revenue": "annualrevenue",
    "stage": "dealstage",
    "birthdate": "date_of_birth",
    "dateofbirth": "date_of_birth",
}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _transform_for(desc: Mapping[str, Any], prop: writer_pb2.Property) -> str | None:
    """The transform that fits the external type and the property type, None if none does."""
    typ = str(desc.get("type") or "string")
    fmt = str(desc.get("format") or "")
    if typ == "array":
        return "split" if prop.type in ("enumeration", "string") else None
    if typ in ("number", "integer"):
        return typ if prop.type == "number" else None
    if typ == "boolean":
        return "bool" if prop.type in ("bool", "enumeration") else None
    if prop.type == "date":
        return "date" if fmt in ("date", "") else None
    if prop.type == "datetime":
        return "datetime"
    if prop.type in ("number", "bool"):
        return None  # an untyped string field would need a deliberate choice
    return "string"


def suggest(
    object_type: str, external_schema: Mapping[str, Any], properties: Mapping[str, writer_pb2.Property]
) -> tuple[str, list[str]]:
    """Returns (mapping YAML, external fields nothing matched)."""
    by_name = {_norm(p.name): p for p in properties.values()}
    by_label = {_norm(p.label): p for p in properties.values() if p.label}
    id_prop = (
        "external_id"
        if "external_id" in properties
        else next((p.name for p in properties.values() if p.has_unique_value), "external_id")
    )
    id_field = next((f for f in _ID_NAMES if f in external_schema), None)
    fields: list[dict[str, Any]] = []
    unmatched: list[str] = []
    used: set[str] = set()
    for name, raw in external_schema.items():
        if name == id_field:
            continue
        desc = raw if isinstance(raw, Mapping) else {}
        keys = [_norm(name), _norm(str(desc.get("title") or ""))]
        keys += [_norm(_SYNONYMS.get(k, "")) for k in keys]
        prop = None
        for k in keys:
            if k and (k in by_name or k in by_label):
                prop = by_name.get(k) or by_label.get(k)
                break
        if prop is None:
            # Fuzzy: the closest name or label, if close enough.
            candidates = difflib.get_close_matches(keys[0], [*by_name, *by_label], n=1, cutoff=0.85)
            if candidates:
                prop = by_name.get(candidates[0]) or by_label.get(candidates[0])
        transform = _transform_for(desc, prop) if prop is not None else None
        if prop is None or transform is None or prop.name in used:
            unmatched.append(name)
            continue
        used.add(prop.name)
        entry: dict[str, Any] = {"hubspot": f"properties.{prop.name}", "external": name}
        if transform != "string":
            entry["transform"] = transform
        if transform == "split":
            entry["delimiter"] = ";"
        if prop.hubspot_defined and prop.name in ("hs_object_id", "createdate", "hs_lastmodifieddate"):
            entry["owner"] = "hubspot"
        fields.append(entry)
    doc = {
        "object_type": object_type,
        "id": {"external": id_field or "external_id", "hubspot": id_prop},
        "fields": fields,
    }
    header = "# Suggested by hubsync: review every line, then `hubsync mapping validate`.\n"
    if unmatched:
        header += "# No HubSpot property matched: " + ", ".join(unmatched) + "\n"
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), unmatched
