"""Transform throughput: a 20-field contact mapping, compiled, beside a hand-written baseline.

Run: ``.venv/bin/python bench/mapper/transform_bench.py`` (one process, so one core).
Goals (issue 6): ≥ 50,000 records/s each way, and ≥ 1/3 of the hand-written baseline.
The baseline does the same work by hand: rename, nest, split, bool, number, date, enum.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from typing import Any

from hubsync.mapper.mappings import LoadedMapping, parse_mappings
from hubsync.mapper.transforms import compile_mapping

MAPPING = """
object_type: contacts
id: {external: external_id, hubspot: external_id}
fields:
  - {hubspot: properties.firstname, external: first_name}
  - {hubspot: properties.lastname, external: last_name}
  - {hubspot: properties.email, external: email}
  - {hubspot: properties.phone, external: phone}
  - {hubspot: properties.mobilephone, external: mobile}
  - {hubspot: properties.company, external: company_name}
  - {hubspot: properties.website, external: website}
  - {hubspot: properties.jobtitle, external: job_title}
  - {hubspot: properties.address, external: address.street}
  - {hubspot: properties.city, external: address.city}
  - {hubspot: properties.state, external: address.state}
  - {hubspot: properties.zip, external: address.postal_code}
  - {hubspot: properties.country, external: address.country}
  - {hubspot: properties.hs_additional_emails, external: additional_emails, transform: split}
  - {hubspot: properties.hs_email_optout, external: email_opt_out, transform: bool}
  - {hubspot: properties.date_of_birth, external: birth_date, transform: date}
  - {hubspot: properties.associatedcompanyid, external: company_hs_id, transform: number}
  - {hubspot: properties.lifecyclestage, external: stage, transform: enum,
     values: {lead: lead, customer: client, subscriber: sub}}
  - {hubspot: properties.hubspot_owner_id, external: owner_id}
  - {hubspot: properties.hs_lead_status, external: lead_status}
"""

PROPS = {
    "external_id": "ext-1",
    "firstname": "Ada",
    "lastname": "Lovelace",
    "email": "ada@example.com",
    "phone": "+44 20 7946 0000",
    "mobilephone": "+44 7700 900000",
    "company": "Analytical Engines",
    "website": "https://example.com",
    "jobtitle": "Mathematician",
    "address": "12 St James's Square",
    "city": "London",
    "state": "London",
    "zip": "SW1Y 4JH",
    "country": "UK",
    "hs_additional_emails": "a@example.com;b@example.com",
    "hs_email_optout": "false",
    "date_of_birth": "-4821465600000",
    "associatedcompanyid": "1234",
    "lifecyclestage": "customer",
    "hubspot_owner_id": "42",
    "hs_lead_status": "OPEN",
}
_EPOCH = dt.date(1970, 1, 1)
_STAGES = {"lead": "lead", "customer": "client", "subscriber": "sub"}
_STAGES_BACK = {v: k for k, v in _STAGES.items()}


def baseline_in(p: dict[str, str]) -> dict[str, Any]:
    g = p.get
    emails = g("hs_additional_emails")
    dob = g("date_of_birth")
    cid = g("associatedcompanyid")
    optout = g("hs_email_optout")
    stage = g("lifecyclestage")
    return {
        "first_name": g("firstname") or None,
        "last_name": g("lastname") or None,
        "email": g("email") or None,
        "phone": g("phone") or None,
        "mobile": g("mobilephone") or None,
        "company_name": g("company") or None,
        "website": g("website") or None,
        "job_title": g("jobtitle") or None,
        "address": {
            "street": g("address") or None,
            "city": g("city") or None,
            "state": g("state") or None,
            "postal_code": g("zip") or None,
            "country": g("country") or None,
        },
        "additional_emails": [e for e in emails.split(";") if e] if emails else None,
        "email_opt_out": optout.lower() == "true" if optout else None,
        "birth_date": (_EPOCH + dt.timedelta(milliseconds=int(dob))).isoformat() if dob else None,
        "company_hs_id": int(float(cid)) if cid else None,
        "stage": _STAGES.get(stage, stage) if stage else None,
        "owner_id": g("hubspot_owner_id") or None,
        "lead_status": g("hs_lead_status") or None,
    }


def baseline_out(r: dict[str, Any]) -> dict[str, str]:
    a = r["address"]
    return {
        "firstname": r["first_name"],
        "lastname": r["last_name"],
        "email": r["email"],
        "phone": r["phone"],
        "mobilephone": r["mobile"],
        "company": r["company_name"],
        "website": r["website"],
        "jobtitle": r["job_title"],
        "address": a["street"],
        "city": a["city"],
        "state": a["state"],
        "zip": a["postal_code"],
        "country": a["country"],
        "hs_additional_emails": ";".join(r["additional_emails"]),
        "hs_email_optout": "true" if r["email_opt_out"] else "false",
        "date_of_birth": str((dt.date.fromisoformat(r["birth_date"]) - _EPOCH).days * 86_400_000),
        "associatedcompanyid": str(r["company_hs_id"]),
        "lifecyclestage": _STAGES_BACK.get(r["stage"], r["stage"]),
        "hubspot_owner_id": r["owner_id"],
        "hs_lead_status": r["lead_status"],
        "external_id": r["external_id"],
    }


def rate(fn: Any, arg: Any, seconds: float = 1.5) -> float:
    n = 0
    batch = 2000
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn(arg)
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def best_of(fn: Any, arg: Any, runs: int = 3) -> float:
    return max(rate(fn, arg) for _ in range(runs))


def main() -> None:
    mapping = compile_mapping(LoadedMapping(parse_mappings(MAPPING, "bench")[0], "bench"))
    assert len(mapping.mapping.fields) == 20
    _, ext = mapping.to_external(PROPS)
    assert ext == baseline_in(PROPS), "the baseline must do the same work"
    ext_full = {**ext, "external_id": "ext-1"}
    assert mapping.to_hubspot("ext-1", ext, owned_only=True) == baseline_out(ext_full)

    compiled_in = best_of(mapping.inbound, PROPS)
    hand_in = best_of(baseline_in, PROPS)
    compiled_out = best_of(lambda r: mapping.to_hubspot("ext-1", r, owned_only=True), ext)
    hand_out = best_of(baseline_out, ext_full)
    print(f"python {platform.python_version()} on {platform.machine()}, one process")
    print(
        f"inbound   compiled {compiled_in:>10,.0f} rec/s   hand-written {hand_in:>10,.0f} rec/s   "
        f"ratio {compiled_in / hand_in:.2f}"
    )
    print(
        f"outbound  compiled {compiled_out:>10,.0f} rec/s   hand-written {hand_out:>10,.0f} rec/s   "
        f"ratio {compiled_out / hand_out:.2f}"
    )


if __name__ == "__main__":
    main()
