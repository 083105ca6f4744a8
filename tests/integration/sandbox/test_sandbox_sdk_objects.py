"""HubSpot's official Python SDK drives the sandbox's newer APIs: tickets and pipelines, custom
objects through the schemas and generic objects clients, and association labels (v4)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hubspot import HubSpot
from hubspot.crm.associations.v4 import models as av4
from hubspot.crm.associations.v4.schema import models as lm
from hubspot.crm.objects import models as om
from hubspot.crm.schemas import models as sm
from hubspot.crm.tickets import models as tm
from hubspot.crm.tickets.exceptions import ApiException as TicketsApiException

from hubsync.sandbox import DEFAULT_PRIVATE_TOKEN
from hubsync.sandbox.testing import ThreadedSandbox
from tests.helpers.sandbox import fast_config


@pytest.fixture
def api() -> Iterator[HubSpot]:
    with ThreadedSandbox(fast_config()) as sb:
        yield HubSpot(access_token=DEFAULT_PRIVATE_TOKEN, host=sb.base_url)


def test_tickets_and_pipelines_through_the_sdk(api: HubSpot) -> None:
    pipes = api.crm.pipelines.pipelines_api.get_all("tickets").results
    stage = pipes[0].stages[0].id
    created = api.crm.tickets.basic_api.create(
        simple_public_object_input_for_create=tm.SimplePublicObjectInputForCreate(
            properties={"subject": "Broken", "hs_pipeline": pipes[0].id, "hs_pipeline_stage": stage}
        )
    )
    assert isinstance(created, tm.SimplePublicObject) and created.properties["subject"] == "Broken"
    got = api.crm.tickets.basic_api.get_by_id(created.id, properties=["hs_pipeline_stage"])
    assert got.properties["hs_pipeline_stage"] == stage
    with pytest.raises(TicketsApiException) as exc:
        api.crm.tickets.basic_api.update(
            created.id,
            simple_public_object_input=tm.SimplePublicObjectInput(properties={"hs_pipeline_stage": "x"}),
        )
    assert exc.value.status == 400 and "x" in str(exc.value.body)
    page = api.crm.tickets.basic_api.get_page(limit=10)
    assert [t.id for t in page.results] == [created.id]


def test_custom_objects_through_schemas_and_objects_clients(api: HubSpot) -> None:
    schema = api.crm.schemas.core_api.create(
        object_schema_egg=sm.ObjectSchemaEgg(
            name="project",
            labels=sm.ObjectTypeDefinitionLabels(singular="Project", plural="Projects"),
            primary_display_property="title",
            required_properties=["title"],
            searchable_properties=["title"],
            properties=[
                sm.ObjectTypePropertyCreate(name="title", label="Title", type="string", field_type="text"),
                sm.ObjectTypePropertyCreate(
                    name="code", label="Code", type="string", field_type="text", has_unique_value=True
                ),
            ],
            associated_objects=["COMPANY"],
        )
    )
    assert isinstance(schema, sm.ObjectSchema)
    assert schema.object_type_id.startswith("2-") and schema.fully_qualified_name == "p12345_project"
    assert [s.object_type_id for s in api.crm.schemas.core_api.get_all().results] == [schema.object_type_id]

    objects = api.crm.objects.basic_api
    rec = objects.create(
        schema.object_type_id,
        simple_public_object_input_for_create=om.SimplePublicObjectInputForCreate(
            properties={"title": "Migration", "code": "P-1"}
        ),
    )
    assert rec.properties["title"] == "Migration"
    same = objects.get_by_id(schema.fully_qualified_name, rec.id, properties=["code"])
    assert same.properties["code"] == "P-1"
    found = api.crm.objects.search_api.do_search(
        schema.object_type_id,
        public_object_search_request=om.PublicObjectSearchRequest(query="Migration", limit=10),
    )
    assert found.total == 1


def test_association_labels_through_the_sdk(api: HubSpot) -> None:
    labels = api.crm.associations.v4.schema.definitions_api
    made = labels.create(
        "contacts",
        "companies",
        public_association_definition_create_request=lm.PublicAssociationDefinitionCreateRequest(
            label="Decision maker", name="decision_maker"
        ),
    )
    type_id = next(r.type_id for r in made.results if r.label == "Decision maker")
    listed = labels.get_all("contacts", "companies").results
    assert any(r.category == "USER_DEFINED" and r.type_id == type_id for r in listed)

    def _make(t: str, **props: str) -> str:
        return str(
            api.crm.objects.basic_api.create(
                t, simple_public_object_input_for_create=om.SimplePublicObjectInputForCreate(properties=props)
            ).id
        )

    contact, company = _make("contacts", email="dm@x.com"), _make("companies", name="DM")
    pair = api.crm.associations.v4.basic_api.create(
        "contacts",
        contact,
        "companies",
        company,
        association_spec=[
            av4.AssociationSpec(association_category="USER_DEFINED", association_type_id=type_id)
        ],
    )
    assert pair.labels == ["Decision maker"]
    page = api.crm.associations.v4.basic_api.get_page("contacts", contact, "companies")
    assert [t.label for t in page.results[0].association_types] == ["Decision maker"]
    api.crm.associations.v4.basic_api.archive("contacts", contact, "companies", company)
    assert api.crm.associations.v4.basic_api.get_page("contacts", contact, "companies").results == []
    labels.remove("contacts", "companies", type_id)
    assert all(r.type_id != type_id for r in labels.get_all("contacts", "companies").results)
