"""The mapping format: loading, errors naming file/line/path, the JSON Schema, the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubsync.mapper.mappings import MappingError, json_schema, load_directory, parse_mappings
from hubsync.mapper.settings import PACKAGED_MAPPINGS
from hubsync.mapper.transforms import MappingSet


def test_packaged_mappings_load() -> None:
    loaded = load_directory(PACKAGED_MAPPINGS)
    assert {m.mapping.object_type for m in loaded} == {"companies", "contacts", "deals"}
    contacts = MappingSet(loaded).get("contacts")
    assert contacts is not None and contacts.id_property == "external_id"
    assert {"firstname", "lastname", "email", "external_id"} <= set(contacts.read_properties)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "object_type: Tickets!\nid: {external: a, hubspot: b}\nfields: [{hubspot: x, external: y}]\n",
            "m.yaml:1: object_type: object type 'Tickets!' is neither a standard type",
        ),
        (
            "object_type: deals\nid: {external: a, hubspot: b}\nfields:\n  - {hubspot: x, external: y}\n"
            "  - {hubspot: z, external: w, transform: enum}\n",
            "m.yaml:5: fields.1: transform enum needs `values`",
        ),
        (
            "object_type: deals\nid: {external: a, hubspot: b}\n"
            "fields:\n  - {hubspot: x, external: y, colour: red}\n",
            "m.yaml:4: fields.0.colour: Extra inputs are not permitted",
        ),
        (
            "object_type: deals\nid: {external: a, hubspot: b}\nfields:\n  - {hubspot: x, external: y}\n"
            "  - {hubspot: z, external: y}\n",
            "m.yaml:1: (top): company field 'y' is mapped twice",
        ),
        (
            "object_type: deals\nid: {external: a, hubspot: b}\nfields:\n  - {hubspot: 'x y', external: y}\n",
            "m.yaml:4: fields.0.hubspot: property 'x y' must be a dotted name",
        ),
        ("object_type: deals\nid: {external: a\n", "m.yaml:3: not valid YAML"),
        ("- just a list\n", "m.yaml:1: a mapping file must be a YAML mapping"),
    ],
)
def test_errors_name_file_line_and_path(text: str, expected: str) -> None:
    with pytest.raises(MappingError) as err:
        parse_mappings(text, "m.yaml")
    assert any(e.startswith(expected) for e in err.value.errors), err.value.errors


def test_directory_rejects_the_same_type_twice(tmp_path: Path) -> None:
    body = "object_type: deals\nid: {external: a, hubspot: b}\nfields: [{hubspot: x, external: y}]\n"
    (tmp_path / "a.yaml").write_text(body)
    (tmp_path / "b.yaml").write_text(body)
    with pytest.raises(MappingError) as err:
        load_directory(tmp_path)
    assert "already mapped" in err.value.errors[0]


def test_several_mappings_in_one_file() -> None:
    text = (
        "mappings:\n"
        "  - {object_type: deals, id: {external: a, hubspot: b}, fields: [{hubspot: x, external: y}]}\n"
        "  - {object_type: companies, id: {external: a, hubspot: b}, fields: [{hubspot: x, external: y}]}\n"
    )
    assert [m.object_type for m in parse_mappings(text, "f")] == ["deals", "companies"]


def test_json_schema_describes_both_shapes() -> None:
    schema = json_schema()
    assert {"Mapping", "MappingFile", "FieldMapping"} <= set(schema["$defs"])
    field = schema["$defs"]["FieldMapping"]["properties"]
    assert set(field["owner"]["enum"]) == {"hubspot", "external", "both"}
    assert "split" in field["transform"]["enum"]


def test_stage_fields_of_a_pipeline_refuse_unmapped_stages_naming_pipeline_and_stage() -> None:
    from hubsync.mapper.mappings import LoadedMapping
    from hubsync.mapper.transforms import TransformError, compile_mapping

    text = (
        "object_type: ticket\n"
        "id: {external: id, hubspot: external_id}\n"
        "fields:\n"
        "  - {hubspot: subject, external: title}\n"
        "  - {hubspot: hs_pipeline_stage, external: status, transform: enum, pipeline: '0',\n"
        "     values: {'1': open, '4': done}}\n"
    )
    (m,) = parse_mappings(text, "t.yaml")
    assert m.object_type == "tickets"
    compiled = compile_mapping(LoadedMapping(m, "t.yaml"))
    props = compiled.to_hubspot("t-1", {"title": "x", "status": "done"}, owned_only=True)
    assert props["hs_pipeline_stage"] == "4" and props["hs_pipeline"] == "0"
    with pytest.raises(TransformError) as err:
        compiled.to_hubspot("t-1", {"status": "escalated"}, owned_only=True)
    assert "'escalated'" in str(err.value) and "pipeline '0'" in str(err.value)
    with pytest.raises(MappingError):
        parse_mappings(text.replace("hs_pipeline_stage", "subject2"), "t.yaml")
