"""HubSpot's official Python SDK (hubspot-api-client) against the sandbox, through its own models.

The SDK is synchronous (urllib3), so the sandbox runs in a background thread here.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hubspot import HubSpot
from hubspot.crm.associations.v4 import models as av4
from hubspot.crm.contacts import models as cm
from hubspot.crm.contacts.exceptions import ApiException as ContactsApiException
from hubspot.crm.properties import models as pm
from hubspot.oauth.exceptions import ApiException as OAuthApiException
from hubspot.utils.signature import Signature

from hubsync.sandbox import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_PRIVATE_TOKEN
from hubsync.sandbox.testing import ThreadedSandbox, WebhookReceiver
from tests.helpers.sandbox import fast_config


@pytest.fixture
def receiver() -> WebhookReceiver:  # type: ignore[override]
    return WebhookReceiver()


@pytest.fixture
def sb(receiver: WebhookReceiver) -> Iterator[ThreadedSandbox]:
    with ThreadedSandbox(fast_config(), extra=[receiver]) as s:
        s.state.webhooks.subs[1001].target_url = receiver.url
        yield s


@pytest.fixture
def api(sb: ThreadedSandbox) -> HubSpot:
    return HubSpot(access_token=DEFAULT_PRIVATE_TOKEN, host=sb.base_url)


def _create(api: HubSpot, **props: str) -> cm.SimplePublicObject:
    return api.crm.contacts.basic_api.create(
        simple_public_object_input_for_create=cm.SimplePublicObjectInputForCreate(properties=props)
    )


def test_crud_through_the_sdk(api: HubSpot) -> None:
    created = _create(api, email="sdk@x.com", firstname="Sdk")
    assert isinstance(created, cm.SimplePublicObject)
    assert created.properties["email"] == "sdk@x.com"
    assert created.created_at is not None

    got = api.crm.contacts.basic_api.get_by_id(created.id, properties=["firstname"])
    assert got.properties["firstname"] == "Sdk"

    updated = api.crm.contacts.basic_api.update(
        created.id, simple_public_object_input=cm.SimplePublicObjectInput(properties={"lastname": "Kit"})
    )
    assert updated.properties["lastname"] == "Kit"

    page = api.crm.contacts.basic_api.get_page(limit=10)
    assert [o.id for o in page.results] == [created.id]

    api.crm.contacts.basic_api.archive(created.id)
    with pytest.raises(ContactsApiException) as exc:
        api.crm.contacts.basic_api.get_by_id(created.id)
    assert exc.value.status == 404


def test_every_batch_call_through_the_sdk(api: HubSpot) -> None:
    batch = api.crm.contacts.batch_api
    created = batch.create(
        batch_input_simple_public_object_batch_input_for_create=cm.BatchInputSimplePublicObjectBatchInputForCreate(
            inputs=[
                cm.SimplePublicObjectBatchInputForCreate(properties={"email": f"b{n}@x.com"}, associations=[])
                for n in range(3)
            ]
        )
    )
    assert isinstance(created, cm.BatchResponseSimplePublicObject)
    assert created.status == "COMPLETE" and len(created.results) == 3
    ids = [o.id for o in created.results]

    read = batch.read(
        batch_read_input_simple_public_object_id=cm.BatchReadInputSimplePublicObjectId(
            inputs=[cm.SimplePublicObjectId(id=i) for i in [*ids, "424242"]],
            properties=["email"],
            properties_with_history=[],
        )
    )
    assert isinstance(read, cm.BatchResponseSimplePublicObjectWithErrors)
    assert read.num_errors == 1 and read.errors[0].context == {"ids": ["424242"]}
    assert sorted(o.id for o in read.results) == sorted(ids)

    updated = batch.update(
        batch_input_simple_public_object_batch_input=cm.BatchInputSimplePublicObjectBatchInput(
            inputs=[cm.SimplePublicObjectBatchInput(id=i, properties={"firstname": "U"}) for i in ids]
        )
    )
    assert all(o.properties["firstname"] == "U" for o in updated.results)

    upserted = batch.upsert(
        batch_input_simple_public_object_batch_input_upsert=cm.BatchInputSimplePublicObjectBatchInputUpsert(
            inputs=[
                cm.SimplePublicObjectBatchInputUpsert(
                    id="b0@x.com", id_property="email", properties={"lastname": "Z"}
                ),
                cm.SimplePublicObjectBatchInputUpsert(
                    id="ext-9", id_property="external_id", properties={"email": "new@x.com"}
                ),
            ]
        )
    )
    by_new = {o.new: o for o in upserted.results}
    assert by_new[False].id == ids[0] and by_new[True].properties["external_id"] == "ext-9"

    batch.archive(
        batch_input_simple_public_object_id=cm.BatchInputSimplePublicObjectId(
            inputs=[cm.SimplePublicObjectId(id=i) for i in ids]
        )
    )
    page = api.crm.contacts.basic_api.get_page(limit=100)
    assert [o.id for o in page.results] == [by_new[True].id]


def test_search_paging_through_the_sdk(api: HubSpot) -> None:
    batch = api.crm.contacts.batch_api
    batch.create(
        batch_input_simple_public_object_batch_input_for_create=cm.BatchInputSimplePublicObjectBatchInputForCreate(
            inputs=[
                cm.SimplePublicObjectBatchInputForCreate(
                    properties={"email": f"s{n:02d}@x.com", "lifecyclestage": "lead" if n % 2 else "customer"}
                )
                for n in range(25)
            ]
        )
    )
    req = cm.PublicObjectSearchRequest(
        filter_groups=[
            cm.FilterGroup(filters=[cm.Filter(property_name="lifecyclestage", operator="EQ", value="lead")])
        ],
        sorts=["email"],
        properties=["email"],
        limit=5,
    )
    seen: list[str] = []
    after = None
    while True:
        req.after = after
        page = api.crm.contacts.search_api.do_search(public_object_search_request=req)
        assert page.total == 12
        seen += [o.properties["email"] for o in page.results]
        if page.paging is None:
            break
        after = page.paging.next.after
    assert seen == [f"s{n:02d}@x.com" for n in range(25) if n % 2]


def test_properties_through_the_sdk(api: HubSpot) -> None:
    core = api.crm.properties.core_api
    names = {p.name for p in core.get_all(object_type="contacts").results}
    assert {"email", "firstname", "lastname", "external_id", "lifecyclestage"} <= names
    prop = core.create(
        object_type="companies",
        property_create=pm.PropertyCreate(
            name="billing_id",
            label="Billing ID",
            type="string",
            field_type="text",
            group_name="companyinformation",
            has_unique_value=True,
        ),
    )
    assert isinstance(prop, pm.ModelProperty) and prop.has_unique_value is True
    assert core.get_by_name(object_type="companies", property_name="billing_id").label == "Billing ID"
    # The new unique property can be used as an upsert idProperty right away.
    res = api.crm.companies.batch_api.upsert(
        batch_input_simple_public_object_batch_input_upsert={
            "inputs": [{"id": "B-1", "idProperty": "billing_id", "properties": {"name": "Acme"}}]
        }
    )
    assert res.results[0].new is True and res.results[0].properties["billing_id"] == "B-1"


def test_associations_through_the_sdk(api: HubSpot) -> None:
    contact = _create(api, email="as@x.com")
    company = api.crm.companies.basic_api.create(
        simple_public_object_input_for_create={"properties": {"name": "Acme"}}
    )
    deal = api.crm.deals.basic_api.create(
        simple_public_object_input_for_create={"properties": {"dealname": "D"}}
    )
    v4 = api.crm.associations.v4
    res = v4.basic_api.create_default("contacts", contact.id, "companies", company.id)
    assert res.results[0].association_spec.association_type_id == 279

    created = v4.batch_api.create(
        "deals",
        "contacts",
        batch_input_public_association_multi_post=av4.BatchInputPublicAssociationMultiPost(
            inputs=[
                av4.PublicAssociationMultiPost(
                    _from=av4.PublicObjectId(id=deal.id),
                    to=av4.PublicObjectId(id=contact.id),
                    types=[
                        av4.AssociationSpec(association_category="HUBSPOT_DEFINED", association_type_id=3)
                    ],
                )
            ]
        ),
    )
    assert created.results[0].from_object_id == deal.id

    read = v4.batch_api.get_page(
        "contacts",
        "companies",
        batch_input_public_fetch_associations_batch_request=av4.BatchInputPublicFetchAssociationsBatchRequest(
            inputs=[av4.PublicFetchAssociationsBatchRequest(id=contact.id)]
        ),
    )
    assert read.results[0].to[0].to_object_id == company.id
    assert [t.type_id for t in read.results[0].to[0].association_types] == [279]

    # The reverse direction exists with its own default type id.
    back = v4.basic_api.get_page("companies", company.id, "contacts")
    assert back.results[0].association_types[0].type_id == 280
    back = v4.basic_api.get_page("contacts", contact.id, "deals")
    assert back.results[0].association_types[0].type_id == 4

    v4.batch_api.archive(
        "contacts",
        "companies",
        batch_input_public_association_multi_archive=av4.BatchInputPublicAssociationMultiArchive(
            inputs=[
                av4.PublicAssociationMultiArchive(
                    _from=av4.PublicObjectId(id=contact.id), to=[av4.PublicObjectId(id=company.id)]
                )
            ]
        ),
    )
    assert v4.basic_api.get_page("contacts", contact.id, "companies").results == []


def test_oauth_token_calls_through_the_sdk(sb: ThreadedSandbox) -> None:
    redirect = "http://127.0.0.1:9/oauth/callback"
    r = httpx.get(
        f"{sb.base_url}/oauth/authorize",
        params={
            "client_id": DEFAULT_CLIENT_ID,
            "redirect_uri": redirect,
            "scope": "crm.objects.contacts.read crm.objects.contacts.write",
            "state": "xyz",
        },
    )
    assert r.status_code == 302
    loc = urlsplit(r.headers["location"])
    q = parse_qs(loc.query)
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == redirect and q["state"] == ["xyz"]

    client = HubSpot(host=sb.base_url)
    tokens = client.oauth.tokens_api.create(
        grant_type="authorization_code",
        code=q["code"][0],
        redirect_uri=redirect,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
    )
    assert tokens.token_type == "bearer" and tokens.expires_in == 1800
    assert tokens.refresh_token.startswith("na1-") and len(tokens.access_token) <= 300

    # The code is single use.
    with pytest.raises(OAuthApiException) as exc:
        client.oauth.tokens_api.create(
            grant_type="authorization_code",
            code=q["code"][0],
            redirect_uri=redirect,
            client_id=DEFAULT_CLIENT_ID,
            client_secret=DEFAULT_CLIENT_SECRET,
        )
    assert exc.value.status == 400

    info = client.oauth.access_tokens_api.get(tokens.access_token)
    assert info.hub_id == 12345 and info.app_id == 1001 and 0 < info.expires_in <= 1800
    assert "crm.objects.contacts.read" in info.scopes

    refreshed = client.oauth.tokens_api.create(
        grant_type="refresh_token",
        refresh_token=tokens.refresh_token,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
    )
    assert refreshed.access_token != tokens.access_token

    user = HubSpot(access_token=refreshed.access_token, host=sb.base_url)
    assert user.crm.contacts.basic_api.get_page().results == []
    assert client.oauth.refresh_tokens_api.get(tokens.refresh_token).client_id == DEFAULT_CLIENT_ID

    client.oauth.refresh_tokens_api.archive(tokens.refresh_token)
    with pytest.raises(OAuthApiException) as exc:
        client.oauth.tokens_api.create(
            grant_type="refresh_token",
            refresh_token=tokens.refresh_token,
            client_id=DEFAULT_CLIENT_ID,
            client_secret=DEFAULT_CLIENT_SECRET,
        )
    assert exc.value.status == 400
    assert '"BAD_REFRESH_TOKEN"' in exc.value.body and '"invalid_grant"' in exc.value.body


def test_sdk_signature_check_accepts_v1_and_v3(
    api: HubSpot, sb: ThreadedSandbox, receiver: WebhookReceiver
) -> None:
    _create(api, email="sig@x.com")
    assert sb.run(sb.state.webhooks.wait_idle(5))
    assert receiver.requests
    for req in receiver.requests:
        body = req.body.decode()
        h = req.headers
        assert Signature.is_valid(
            signature=h["x-hubspot-signature"],
            client_secret=DEFAULT_CLIENT_SECRET,
            request_body=body,
            signature_version="v1",
        )
        assert Signature.is_valid(
            signature=h["x-hubspot-signature-v3"],
            client_secret=DEFAULT_CLIENT_SECRET,
            request_body=body,
            http_uri=receiver.url,
            http_method="POST",
            signature_version="v3",
            timestamp=h["x-hubspot-request-timestamp"],
        )
        assert not Signature.is_valid(
            signature=h["x-hubspot-signature-v3"],
            client_secret="wrong-secret",
            request_body=body,
            http_uri=receiver.url,
            signature_version="v3",
            timestamp=h["x-hubspot-request-timestamp"],
        )


@pytest.mark.parametrize("object_type", ["companies", "deals"])
def test_companies_and_deals_batches_through_the_sdk(api: HubSpot, object_type: str) -> None:
    from hubspot.crm.companies import models as com
    from hubspot.crm.deals import models as dm

    m = com if object_type == "companies" else dm
    name = "name" if object_type == "companies" else "dealname"
    api_ns = getattr(api.crm, object_type)
    upserted = api_ns.batch_api.upsert(
        batch_input_simple_public_object_batch_input_upsert=m.BatchInputSimplePublicObjectBatchInputUpsert(
            inputs=[
                m.SimplePublicObjectBatchInputUpsert(
                    id=f"ext-{n}", id_property="external_id", properties={name: f"N{n}"}
                )
                for n in range(3)
            ]
        )
    )
    assert all(o.new for o in upserted.results)
    ids = sorted(o.id for o in upserted.results)
    read = api_ns.batch_api.read(
        batch_read_input_simple_public_object_id=m.BatchReadInputSimplePublicObjectId(
            inputs=[m.SimplePublicObjectId(id="ext-1")], id_property="external_id", properties=[name]
        )
    )
    assert read.results[0].properties[name] == "N1"
    updated = api_ns.batch_api.update(
        batch_input_simple_public_object_batch_input=m.BatchInputSimplePublicObjectBatchInput(
            inputs=[m.SimplePublicObjectBatchInput(id=i, properties={name: "U"}) for i in ids]
        )
    )
    assert {o.properties[name] for o in updated.results} == {"U"}
    found = api_ns.search_api.do_search(
        public_object_search_request=m.PublicObjectSearchRequest(
            filter_groups=[
                m.FilterGroup(
                    filters=[m.Filter(property_name="external_id", operator="IN", values=["ext-0", "ext-2"])]
                )
            ]
        )
    )
    assert found.total == 2
    api_ns.batch_api.archive(
        batch_input_simple_public_object_id=m.BatchInputSimplePublicObjectId(
            inputs=[m.SimplePublicObjectId(id=ids[0])]
        )
    )
    assert len(api_ns.basic_api.get_page(limit=10).results) == 2


def test_merge_and_gdpr_delete_through_the_sdk(api: HubSpot) -> None:
    a = _create(api, email="m1@x.com", firstname="Keep")
    b = _create(api, email="m2@x.com", lastname="Moved")
    merged = api.crm.contacts.basic_api.merge(
        public_merge_input=cm.PublicMergeInput(primary_object_id=a.id, object_id_to_merge=b.id)
    )
    assert (
        merged.id == a.id
        and merged.properties["lastname"] == "Moved"
        and merged.properties["firstname"] == "Keep"
    )
    # The merged-away id now reads as the primary record.
    assert api.crm.contacts.basic_api.get_by_id(b.id).id == a.id
    api.crm.contacts.basic_api.purge(public_gdpr_delete_input=cm.PublicGdprDeleteInput(object_id=a.id))
    with pytest.raises(ContactsApiException) as exc:
        api.crm.contacts.basic_api.get_by_id(a.id, archived=True)
    assert exc.value.status == 404
