"""Property definitions: HubSpot's default properties for the three objects plus custom ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .objecttypes import STANDARD

# objectType path names and ids of the standard types, as HubSpot accepts them in URLs. Custom
# objects are per portal: see ``objecttypes.TypeRegistry``.
OBJECT_TYPES: dict[str, str] = {a: t.name for t in STANDARD for a in t.aliases(0)}
OBJECT_TYPE_IDS = {t.name: t.type_id for t in STANDARD}
# Singular names used in webhook subscription types and error messages.
SINGULAR = {t.name: t.singular for t in STANDARD}
UPPER = {t.name: t.upper for t in STANDARD}
# What a read returns when the caller names no properties (HubSpot's defaults).
DEFAULT_READ_PROPERTIES: dict[str, tuple[str, ...]] = {t.name: t.default_read for t in STANDARD}
# Properties the free-text `query` of a search looks in.
QUERY_PROPERTIES: dict[str, tuple[str, ...]] = {t.name: t.query_props for t in STANDARD}
# Set by the sandbox, never by a client.
READ_ONLY = frozenset(
    {
        "hs_object_id",
        "createdate",
        "lastmodifieddate",
        "hs_lastmodifieddate",
        "hs_createdate",
        "hs_merged_object_ids",
        "hs_object_source",
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


def _eng(group: str, *extra: tuple[str, str, str, str, str]) -> list[tuple[str, str, str, str, str]]:
    """Engagements: ``hs_createdate`` instead of ``createdate``, ``hs_timestamp`` required."""
    return [
        ("hs_object_id", "Record ID", "number", "number", group),
        ("hs_createdate", "Create Date", "datetime", "date", group),
        ("hs_lastmodifieddate", "Last Modified Date", "datetime", "date", group),
        ("hs_timestamp", "Activity date", "datetime", "date", group),
        ("hubspot_owner_id", "Activity assigned to", "enumeration", "select", group),
        ("hs_attachment_ids", "Attachment IDs", "enumeration", "checkbox", group),
        *extra,
    ]


_DEFAULTS.update(
    {
        "tickets": [
            *_base("ticketinformation"),
            ("subject", "Ticket name", *_TXT, "ticketinformation"),
            ("content", "Ticket description", "string", "textarea", "ticketinformation"),
            ("hs_pipeline", "Pipeline", "enumeration", "select", "ticketinformation"),
            ("hs_pipeline_stage", "Ticket status", "enumeration", "select", "ticketinformation"),
            ("hs_ticket_priority", "Priority", "enumeration", "select", "ticketinformation"),
            ("hs_ticket_category", "Category", "enumeration", "checkbox", "ticketinformation"),
            ("source_type", "Source", "enumeration", "select", "ticketinformation"),
            ("closed_date", "Close date", "datetime", "date", "ticketinformation"),
        ],
        "products": [
            *_base("productinformation"),
            ("name", "Name", *_TXT, "productinformation"),
            ("description", "Description", "string", "textarea", "productinformation"),
            ("price", "Unit price", "number", "number", "productinformation"),
            ("hs_sku", "SKU", *_TXT, "productinformation"),
            ("hs_cost_of_goods_sold", "Unit cost", "number", "number", "productinformation"),
            ("recurringbillingfrequency", "Billing frequency", "enumeration", "select", "productinformation"),
        ],
        "line_items": [
            *_base("lineiteminformation"),
            ("name", "Name", *_TXT, "lineiteminformation"),
            ("description", "Description", "string", "textarea", "lineiteminformation"),
            ("quantity", "Quantity", "number", "number", "lineiteminformation"),
            ("price", "Unit price", "number", "number", "lineiteminformation"),
            ("amount", "Net price", "number", "number", "lineiteminformation"),
            ("discount", "Unit discount", "number", "number", "lineiteminformation"),
            ("hs_product_id", "Product ID", "number", "number", "lineiteminformation"),
            ("hs_sku", "SKU", *_TXT, "lineiteminformation"),
            (
                "recurringbillingfrequency",
                "Billing frequency",
                "enumeration",
                "select",
                "lineiteminformation",
            ),
        ],
        "quotes": [
            ("hs_object_id", "Record ID", "number", "number", "quoteinformation"),
            ("hs_createdate", "Create Date", "datetime", "date", "quoteinformation"),
            ("hs_lastmodifieddate", "Last Modified Date", "datetime", "date", "quoteinformation"),
            ("hs_title", "Quote name", *_TXT, "quoteinformation"),
            ("hs_expiration_date", "Expiration date", "datetime", "date", "quoteinformation"),
            ("hs_status", "Quote approval status", "enumeration", "select", "quoteinformation"),
            ("hs_quote_amount", "Quote amount", "number", "number", "quoteinformation"),
            ("hs_language", "Language", *_TXT, "quoteinformation"),
            ("hubspot_owner_id", "Owner", "enumeration", "select", "quoteinformation"),
        ],
        "notes": _eng("engagement", ("hs_note_body", "Note body", "string", "html", "engagement")),
        "calls": _eng(
            "engagement",
            ("hs_call_title", "Call title", *_TXT, "engagement"),
            ("hs_call_body", "Call notes", "string", "html", "engagement"),
            ("hs_call_duration", "Call duration", "number", "number", "engagement"),
            ("hs_call_direction", "Call direction", "enumeration", "select", "engagement"),
            ("hs_call_status", "Call status", "enumeration", "select", "engagement"),
        ),
        "emails": _eng(
            "engagement",
            ("hs_email_subject", "Email subject", *_TXT, "engagement"),
            ("hs_email_text", "Email body", "string", "textarea", "engagement"),
            ("hs_email_direction", "Email direction", "enumeration", "select", "engagement"),
            ("hs_email_status", "Email send status", "enumeration", "select", "engagement"),
        ),
        "meetings": _eng(
            "engagement",
            ("hs_meeting_title", "Meeting name", *_TXT, "engagement"),
            ("hs_meeting_body", "Meeting description", "string", "html", "engagement"),
            ("hs_meeting_start_time", "Start time", "datetime", "date", "engagement"),
            ("hs_meeting_end_time", "End time", "datetime", "date", "engagement"),
            ("hs_meeting_outcome", "Meeting outcome", "enumeration", "select", "engagement"),
        ),
        "tasks": _eng(
            "engagement",
            ("hs_task_subject", "Task title", *_TXT, "engagement"),
            ("hs_task_body", "Task notes", "string", "html", "engagement"),
            ("hs_task_status", "Task status", "enumeration", "select", "engagement"),
            ("hs_task_priority", "Priority", "enumeration", "select", "engagement"),
            ("hs_task_type", "Task type", "enumeration", "select", "engagement"),
        ),
    }
)

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
    "hs_ticket_priority": _opts("LOW", "MEDIUM", "HIGH", "URGENT"),
    "hs_ticket_category": _opts("PRODUCT_ISSUE", "BILLING_ISSUE", "FEATURE_REQUEST", "GENERAL_INQUIRY"),
    "source_type": _opts("CHAT", "EMAIL", "FORM", "PHONE"),
    "recurringbillingfrequency": _opts("monthly", "quarterly", "annually"),
    "hs_status": _opts("DRAFT", "APPROVAL_NOT_NEEDED", "PENDING_APPROVAL", "APPROVED", "REJECTED"),
    "hs_call_direction": _opts("INBOUND", "OUTBOUND"),
    "hs_call_status": _opts("BUSY", "CALLING_CRM_USER", "CANCELED", "COMPLETED", "CONNECTING", "FAILED"),
    "hs_email_direction": _opts("EMAIL", "INCOMING_EMAIL", "FORWARDED_EMAIL"),
    "hs_email_status": _opts("BOUNCED", "FAILED", "SCHEDULED", "SENDING", "SENT"),
    "hs_meeting_outcome": _opts("SCHEDULED", "COMPLETED", "RESCHEDULED", "NO_SHOW", "CANCELED"),
    "hs_task_status": _opts("NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED"),
    "hs_task_priority": _opts("NONE", "LOW", "MEDIUM", "HIGH"),
    "hs_task_type": _opts("CALL", "EMAIL", "TODO"),
}
# Enumerations whose values are not checked against options (owners, multi-value lists).
_OPEN_ENUMS = frozenset(
    {"hubspot_owner_id", "hs_additional_emails", "hs_merged_object_ids", "hs_attachment_ids"}
)
# Pipeline and stage properties: their values are checked against the portal's pipelines.
PIPELINE_PROPERTIES: dict[str, tuple[str, str]] = {
    "deals": ("pipeline", "dealstage"),
    "tickets": ("hs_pipeline", "hs_pipeline_stage"),
}
PIPELINE_ENUMS = frozenset(n for pair in PIPELINE_PROPERTIES.values() for n in pair)


@dataclass(slots=True)
class PropertyGroup:
    """A property group (``/crm/v3/properties/{objectType}/groups``)."""

    name: str
    label: str
    display_order: int = -1
    archived: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "displayOrder": self.display_order,
            "archived": self.archived,
        }


def default_groups(object_type: str, props: dict[str, PropertyDef]) -> dict[str, PropertyGroup]:
    """One group per group name the default properties use (HubSpot's ``…information``)."""
    out: dict[str, PropertyGroup] = {}
    for p in props.values():
        if p.group_name not in out:
            label = p.group_name.replace("information", " information").strip().capitalize()
            out[p.group_name] = PropertyGroup(p.group_name, label, len(out))
    return out


def custom_object_properties(group: str) -> dict[str, PropertyDef]:
    """What every custom object has before its own properties: ids and dates."""
    out: dict[str, PropertyDef] = {}
    for name, label, typ, field_type, g in _base(group):
        out[name] = PropertyDef(name, label, typ, field_type, g)
    return out


def default_properties(object_type: str) -> dict[str, PropertyDef]:
    """HubSpot's default properties of one standard object type, plus the custom ``external_id``.

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
    elif t == "enumeration" and prop.options and prop.name not in _OPEN_ENUMS | PIPELINE_ENUMS:
        allowed = {o["value"] for o in prop.options}
        if prop.field_type == "checkbox":
            bad = [v for v in value.split(";") if v not in allowed]
            if bad:
                return f"{bad[0]} was not one of the allowed options: {sorted(allowed)}"
        elif value not in allowed:
            return f"{value} was not one of the allowed options: {sorted(allowed)}"
    return None
