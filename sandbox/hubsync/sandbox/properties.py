"""Property definitions: HubSpot's default properties for the three objects plus custom ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# objectType path names and ids, as HubSpot accepts them in URLs.
OBJECT_TYPES: dict[str, str] = {
    "contacts": "contacts",
    "contact": "contacts",
    "0-1": "contacts",
    "companies": "companies",
    "company": "companies",
    "0-2": "companies",
    "deals": "deals",
    "deal": "deals",
    "0-3": "deals",
}
OBJECT_TYPE_IDS = {"contacts": "0-1", "companies": "0-2", "deals": "0-3"}
# Singular names used in webhook subscription types and error messages.
SINGULAR = {"contacts": "contact", "companies": "company", "deals": "deal"}
UPPER = {"contacts": "CONTACT", "companies": "COMPANY", "deals": "DEAL"}

# What a read returns when the caller names no properties (HubSpot's defaults).
DEFAULT_READ_PROPERTIES: dict[str, tuple[str, ...]] = {
    "contacts": ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"),
    "companies": ("createdate", "domain", "hs_lastmodifieddate", "hs_object_id", "name"),
    "deals": (
        "amount",
        "closedate",
        "createdate",
        "dealname",
        "dealstage",
        "hs_lastmodifieddate",
        "hs_object_id",
        "pipeline",
    ),
}
# Properties the free-text `query` of a search looks in.
QUERY_PROPERTIES: dict[str, tuple[str, ...]] = {
    "contacts": ("firstname", "lastname", "email", "phone", "company", "hs_additional_emails"),
    "companies": ("name", "domain", "website", "phone"),
    "deals": ("dealname",),
}
# Set by the sandbox, never by a client.
READ_ONLY = frozenset(
    {
        "hs_object_id",
        "createdate",
        "lastmodifieddate",
        "hs_lastmodifieddate",
        "hs_createdate",
        "hs_merged_object_ids",
    }
)


@dataclass(slots=True)
class PropertyDef:
    name: str
    label: str
    type: str  # bool, date, datetime, enumeration, number, phone_number, string
    field_type: str
    group_name: str
    has_unique_value: bool = False
    hubspot_defined: bool = True
    hidden: bool = False
    description: str = ""
    options: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = "2019-08-06T02:41:52.261Z"
    updated_at: str = "2019-08-06T02:41:52.261Z"

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "fieldType": self.field_type,
            "groupName": self.group_name,
            "description": self.description,
            "options": self.options,
            "displayOrder": -1,
            "calculated": False,
            "externalOptions": False,
            "hasUniqueValue": self.has_unique_value,
            "hidden": self.hidden,
            "hubspotDefined": self.hubspot_defined,
            "formField": not self.hubspot_defined,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": False,
            "modificationMetadata": {
                "archivable": not self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.name in READ_ONLY,
            },
        }


def _opts(*values: str) -> list[dict[str, Any]]:
    return [
        {"label": v.replace("_", " ").title(), "value": v, "displayOrder": i, "hidden": False}
        for i, v in enumerate(values)
    ]


_LIFECYCLE = _opts(
    "subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer", "other"
)
_TXT = ("string", "text")


def _base(group: str) -> list[tuple[str, str, str, str, str]]:
    return [
        ("hs_object_id", "Record ID", "number", "number", group),
        ("createdate", "Create Date", "datetime", "date", group),
        ("hs_lastmodifieddate", "Last Modified Date", "datetime", "date", group),
        ("hubspot_owner_id", "Owner", "enumeration", "select", group),
        ("hs_merged_object_ids", "Merged record IDs", "enumeration", "checkbox", group),
    ]


_DEFAULTS: dict[str, list[tuple[str, str, str, str, str]]] = {
    "contacts": [
        *_base("contactinformation"),
        ("lastmodifieddate", "Last Modified Date", "datetime", "date", "contactinformation"),
        ("email", "Email", *_TXT, "contactinformation"),
        ("firstname", "First Name", *_TXT, "contactinformation"),
        ("lastname", "Last Name", *_TXT, "contactinformation"),
        ("phone", "Phone Number", "string", "phonenumber", "contactinformation"),
        ("mobilephone", "Mobile Phone Number", "string", "phonenumber", "contactinformation"),
        ("company", "Company Name", *_TXT, "contactinformation"),
        ("website", "Website URL", *_TXT, "contactinformation"),
        ("jobtitle", "Job Title", *_TXT, "contactinformation"),
        ("address", "Street Address", *_TXT, "contactinformation"),
        ("city", "City", *_TXT, "contactinformation"),
        ("state", "State/Region", *_TXT, "contactinformation"),
        ("zip", "Postal Code", *_TXT, "contactinformation"),
        ("country", "Country/Region", *_TXT, "contactinformation"),
        (
            "hs_additional_emails",
            "Additional email addresses",
            "enumeration",
            "checkbox",
            "contactinformation",
        ),
        ("lifecyclestage", "Lifecycle Stage", "enumeration", "radio", "contactinformation"),
        ("hs_email_optout", "Unsubscribed from all email", "bool", "booleancheckbox", "contactinformation"),
        ("date_of_birth", "Date of birth", "date", "date", "contactinformation"),
        ("associatedcompanyid", "Primary Associated Company ID", "number", "number", "contactinformation"),
    ],
    "companies": [
        *_base("companyinformation"),
        ("name", "Company name", *_TXT, "companyinformation"),
        ("domain", "Company Domain Name", *_TXT, "companyinformation"),
        ("website", "Website URL", *_TXT, "companyinformation"),
        ("phone", "Phone Number", "string", "phonenumber", "companyinformation"),
        ("industry", "Industry", *_TXT, "companyinformation"),
        ("city", "City", *_TXT, "companyinformation"),
        ("state", "State/Region", *_TXT, "companyinformation"),
        ("country", "Country/Region", *_TXT, "companyinformation"),
        ("numberofemployees", "Number of Employees", "number", "number", "companyinformation"),
        ("annualrevenue", "Annual Revenue", "number", "number", "companyinformation"),
        ("description", "Description", "string", "textarea", "companyinformation"),
        ("lifecyclestage", "Lifecycle Stage", "enumeration", "radio", "companyinformation"),
        ("founded_year", "Year Founded", *_TXT, "companyinformation"),
        ("is_public", "Is Public", "bool", "booleancheckbox", "companyinformation"),
    ],
    "deals": [
        *_base("dealinformation"),
        ("dealname", "Deal Name", *_TXT, "dealinformation"),
        ("amount", "Amount", "number", "number", "dealinformation"),
        ("closedate", "Close Date", "datetime", "date", "dealinformation"),
        ("dealstage", "Deal Stage", "enumeration", "radio", "dealinformation"),
        ("pipeline", "Pipeline", "enumeration", "select", "dealinformation"),
        ("dealtype", "Deal Type", "enumeration", "radio", "dealinformation"),
        ("description", "Deal Description", "string", "textarea", "dealinformation"),
        ("hs_priority", "Priority", "enumeration", "select", "dealinformation"),
    ],
}

_ENUM_OPTIONS: dict[str, list[dict[str, Any]]] = {
    "lifecyclestage": _LIFECYCLE,
    "dealstage": _opts(
        "appointmentscheduled",
        "qualifiedtobuy",
        "presentationscheduled",
        "decisionmakerboughtin",
        "contractsent",
        "closedwon",
        "closedlost",
    ),
    "pipeline": _opts("default"),
    "dealtype": _opts("newbusiness", "existingbusiness"),
    "hs_priority": _opts("low", "medium", "high"),
}
# Enumerations whose values are not checked against options (owners, multi-value lists).
_OPEN_ENUMS = frozenset({"hubspot_owner_id", "hs_additional_emails", "hs_merged_object_ids"})


def default_properties(object_type: str) -> dict[str, PropertyDef]:
    """HubSpot's default properties of one object type, plus the custom ``external_id``.

    ``external_id`` (a string with ``hasUniqueValue``) exists by default so that clients can
    upsert by it, as hubsync does.
    """
    out: dict[str, PropertyDef] = {}
    for name, label, typ, field_type, group in _DEFAULTS[object_type]:
        opts = _ENUM_OPTIONS.get(name, [])
        if typ == "bool":
            opts = [
                {"label": "Yes", "value": "true", "displayOrder": 0, "hidden": False},
                {"label": "No", "value": "false", "displayOrder": 1, "hidden": False},
            ]
        out[name] = PropertyDef(name, label, typ, field_type, group, options=list(opts))
    out["external_id"] = PropertyDef(
        "external_id",
        "External ID",
        "string",
        "text",
        group_name=_DEFAULTS[object_type][-1][4],
        has_unique_value=True,
        hubspot_defined=False,
        description="Unique id of the record in the company's own system.",
    )
    return out


def validate_value(prop: PropertyDef, value: str) -> str | None:
    """Returns an error message when ``value`` is not valid for ``prop``, else None."""
    if value == "":
        return None
    t = prop.type
    if t == "number":
        try:
            float(value)
        except ValueError:
            return f"{value} was not a valid number."
    elif t == "bool":
        if value.lower() not in ("true", "false"):
            return f"{value} was not a valid boolean option. Valid options are: [true, false]"
    elif t in ("date", "datetime"):
        from .search import parse_datetime_ms

        ms = parse_datetime_ms(value)
        if ms is None:
            return f"{value} was not a valid long or ISO 8601 date"
        if t == "date" and ms % 86_400_000 != 0:
            return f"{value} is at {ms % 86_400_000} ms past midnight UTC, dates must be at midnight UTC"
    elif t == "enumeration" and prop.options and prop.name not in _OPEN_ENUMS:
        allowed = {o["value"] for o in prop.options}
        if prop.field_type == "checkbox":
            bad = [v for v in value.split(";") if v not in allowed]
            if bad:
                return f"{bad[0]} was not one of the allowed options: {sorted(allowed)}"
        elif value not in allowed:
            return f"{value} was not one of the allowed options: {sorted(allowed)}"
    return None
