"""Per-portal mapping overrides through the real ConfigService, on two mapper replicas sharing
one Redis, validated against the sandbox portal's properties through the real writer."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from redis.asyncio import Redis
from rich.console import Console

from hubsync.api.common.v1 import common_pb2
from hubsync.api.common.v1 import config_pb2 as doc_pb2
from hubsync.api.mapper.v1 import config_pb2, config_pb2_grpc, mapper_pb2, mapper_pb2_grpc
from hubsync.core.channels import open_channel
from hubsync.core.errors import error_info
from hubsync.core.redis import redis_from_url
from tests.helpers.auth import SANDBOX_PORTAL, register_sandbox_private_app
from tests.helpers.mapper import fast_portals, read_changes, running_mapper, suite

OTHER = 777  # a second sandbox portal, connected
OTHER_TOKEN = "pat-na1-00000000-0000-4000-8000-000000000777"
UNCONNECTED = 888
MAPPINGS = doc_pb2.CONFIG_KIND_MAPPINGS

GIVEN_NAME = """\
object_type: contacts
id: {external: external_id, hubspot: external_id}
fields:
  - {hubspot: properties.firstname, external: given_name}
  - {hubspot: properties.email, external: email}
"""
FORENAME = GIVEN_NAME.replace("given_name", "forename")
# The property does not exist in the portal (line 4: fields[0]).
MISSING_PROPERTY = GIVEN_NAME.replace("properties.firstname", "properties.first_name_typo")
# Not a transform (line 5: fields[1].transform).
BAD_TRANSFORM = GIVEN_NAME.replace("external: email}", "external: email, transform: shout}")


@dataclass
class Replicas:
    config: config_pb2_grpc.ConfigServiceStub  # on replica A, as the operator (cli)
    config_channel: grpc.aio.Channel
    a: mapper_pb2_grpc.MapperServiceStub  # as an internal client
    b: mapper_pb2_grpc.MapperServiceStub
    redis: Redis
    hubspot: httpx.AsyncClient  # the sandbox's API as portal 12345's private app


@pytest.fixture
async def replicas(redis_url: str, caller_tokens: dict[str, str]) -> AsyncIterator[Replicas]:
    async with AsyncExitStack() as stack:
        s = await stack.enter_async_context(
            suite(redis_url, caller_tokens, portals=fast_portals(OTHER, OTHER_TOKEN))
        )
        await register_sandbox_private_app(s.auth_address, caller_tokens, portal_id=OTHER, token=OTHER_TOKEN)
        stubs: list[Any] = []
        for name in ("mapper-a", "mapper-b"):
            m = await stack.enter_async_context(
                running_mapper(
                    redis_url,
                    caller_tokens,
                    writer_address=s.writer_address,
                    consumer_name=name,
                    inbound_enabled=False,
                )
            )
            client = await stack.enter_async_context(open_channel(m.address, caller_tokens["client"]))
            stubs.append(mapper_pb2_grpc.MapperServiceStub(client))
            if not stubs[1:]:
                cli = await stack.enter_async_context(open_channel(m.address, caller_tokens["cli"]))
        redis = redis_from_url(redis_url)
        stack.push_async_callback(redis.aclose)
        yield Replicas(config_pb2_grpc.ConfigServiceStub(cli), cli, stubs[0], stubs[1], redis, s.hubspot)


def _scope(portal: int = SANDBOX_PORTAL) -> config_pb2.ConfigScope:
    return config_pb2.ConfigScope(portal_id=portal)


def _mappings(*files: tuple[str, str]) -> doc_pb2.ConfigDocument:
    return doc_pb2.ConfigDocument(
        mappings=doc_pb2.MappingsConfig(files=[doc_pb2.MappingFile(name=n, yaml=y) for n, y in files])
    )


async def _set(r: Replicas, yaml: str, portal: int = SANDBOX_PORTAL) -> int:
    reply = await r.config.SetConfig(
        config_pb2.SetConfigRequest(
            scope=_scope(portal), kind=MAPPINGS, document=_mappings(("contacts.yaml", yaml))
        ),
        timeout=60,
    )
    return reply.version.version


async def _fields(stub: mapper_pb2_grpc.MapperServiceStub, portal: int) -> set[str]:
    """The company fields a HubSpot contact becomes for ``portal``."""
    reply = await stub.Transform(
        mapper_pb2.TransformRequest(
            direction=mapper_pb2.DIRECTION_INBOUND,
            portal_id=portal,
            hubspot_records=[
                common_pb2.HubSpotRecord(
                    id="1",
                    object_type="contacts",
                    properties={"firstname": "Ada", "email": "ada@example.com", "external_id": "c-1"},
                )
            ],
        ),
        timeout=30,
    )
    return set(json_format.MessageToDict(reply.external_records[0].fields))


async def _eventually(stub: mapper_pb2_grpc.MapperServiceStub, portal: int, field: str) -> set[str]:
    """The portal's fields once ``field`` is among them (a replica applies a change within its
    cache's life); generous for a loaded machine, no timing asserted."""
    fields: set[str] = set()
    for _ in range(600):
        fields = await _fields(stub, portal)
        if field in fields:
            return fields
        await asyncio.sleep(0.05)
    raise AssertionError(f"portal {portal} never mapped {field}: {sorted(fields)}")


def _violations(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:  # type: ignore[arg-type]
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    return {v.field: v.description for v in bad.field_violations}
    return {}


async def test_an_override_changes_only_its_portal_on_both_replicas(replicas: Replicas) -> None:
    r = replicas
    # Both replicas have read the portal's (absent) override before the change.
    for stub in (r.a, r.b):
        assert "first_name" in await _fields(stub, SANDBOX_PORTAL)
    assert await _set(r, GIVEN_NAME) == 1
    for stub in (r.a, r.b):
        fields = await _eventually(stub, SANDBOX_PORTAL, "given_name")
        assert "first_name" not in fields
        # Another portal, and the default (portal 0), keep the default mapping.
        assert {"first_name", "email"} <= await _fields(stub, OTHER)
        assert "given_name" not in await _fields(stub, 0)
    shown = await r.config.GetConfig(config_pb2.GetConfigRequest(scope=_scope(), kind=MAPPINGS), timeout=30)
    layers = {m.object_type: m.layer for m in shown.effective_mappings}
    assert layers == {"companies": "default", "contacts": f"portal:{SANDBOX_PORTAL}", "deals": "default"}


@pytest.mark.parametrize(
    ("yaml", "where", "what"),
    [
        (MISSING_PROPERTY, "contacts.yaml: contacts: fields[0].hubspot", "first_name_typo"),
        (BAD_TRANSFORM, "contacts.yaml:5: fields.1.transform", "Input should be"),
    ],
)
async def test_a_bad_override_is_refused_and_the_previous_version_stays(
    replicas: Replicas, yaml: str, where: str, what: str
) -> None:
    r = replicas
    assert await _set(r, GIVEN_NAME) == 1
    await _eventually(r.b, SANDBOX_PORTAL, "given_name")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _set(r, yaml)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(refused.value)
    named = [f for f in violations if f.endswith(where) and f.startswith(f"portal:{SANDBOX_PORTAL}/")]
    assert named, violations
    assert what in violations[named[0]]
    info = error_info(refused.value)
    assert info is not None and info.reason in ("MAPPING_INVALID", "MAPPING_TARGETS_INVALID")
    # Nothing stored: version 1 is in force and applied everywhere.
    shown = await r.config.GetConfig(config_pb2.GetConfigRequest(scope=_scope(), kind=MAPPINGS), timeout=30)
    assert shown.current.version == 1
    listed = await r.config.ListConfigVersions(
        config_pb2.ListConfigVersionsRequest(scope=_scope(), kind=MAPPINGS), timeout=30
    )
    assert [v.version for v in listed.versions] == [1]
    for stub in (r.a, r.b):
        assert "given_name" in await _fields(stub, SANDBOX_PORTAL)


async def test_history_lists_versions_and_rollback_restores(
    replicas: Replicas, caller_tokens: dict[str, str]
) -> None:
    r = replicas
    assert await _set(r, GIVEN_NAME) == 1
    assert await _set(r, FORENAME) == 2
    for stub in (r.a, r.b):
        await _eventually(stub, SANDBOX_PORTAL, "forename")
    listed = await r.config.ListConfigVersions(
        config_pb2.ListConfigVersionsRequest(scope=_scope(), kind=MAPPINGS), timeout=30
    )
    assert [v.version for v in listed.versions] == [2, 1]
    assert {v.author for v in listed.versions} == {"cli"}
    assert "forename" in listed.versions[0].document.mappings.files[0].yaml

    back = await r.config.RollbackConfig(
        config_pb2.RollbackConfigRequest(scope=_scope(), kind=MAPPINGS, version=1), timeout=60
    )
    assert (back.version.version, back.version.restored_version) == (3, 1)
    for stub in (r.a, r.b):
        fields = await _eventually(stub, SANDBOX_PORTAL, "given_name")
        assert "forename" not in fields

    # Optimistic concurrency: a change based on an old version is refused, nothing stored.
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await r.config.SetConfig(
            config_pb2.SetConfigRequest(
                scope=_scope(),
                kind=MAPPINGS,
                document=_mappings(("contacts.yaml", FORENAME)),
                expected_version=2,
            ),
            timeout=60,
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    # Clearing the override is a version too: the default applies again.
    cleared = await r.config.SetConfig(
        config_pb2.SetConfigRequest(scope=_scope(), kind=MAPPINGS, expected_version=3), timeout=60
    )
    assert cleared.version.version == 4
    for stub in (r.a, r.b):
        await _eventually(stub, SANDBOX_PORTAL, "first_name")

    # What Redis holds names the caller, never its credential.
    stored: list[bytes] = []
    client: Any = r.redis
    for key in await client.keys("*config*"):
        kind = await client.type(key)
        if kind == b"hash":
            stored += (await client.hgetall(key)).values()
        elif kind == b"stream":
            stored += [v for _, entry in await client.xrange(key) for v in entry.values()]
    assert len(stored) >= 4 * 5  # every version's fields, in force and in history
    assert b"cli" in stored
    assert not [t for t in caller_tokens.values() if any(t.encode() in v for v in stored)]


async def test_a_tenant_override_applies_to_its_portals_below_their_own(replicas: Replicas) -> None:
    r = replicas
    tenant = config_pb2.ConfigScope(tenant="acme")
    await r.config.SetConfig(
        config_pb2.SetConfigRequest(
            scope=tenant, kind=MAPPINGS, document=_mappings(("contacts.yaml", FORENAME))
        ),
        timeout=60,
    )
    join = doc_pb2.ConfigDocument(tenant=doc_pb2.TenantConfig(tenant="acme"))
    for portal in (SANDBOX_PORTAL, OTHER):
        await r.config.SetConfig(
            config_pb2.SetConfigRequest(scope=_scope(portal), kind=doc_pb2.CONFIG_KIND_TENANT, document=join),
            timeout=60,
        )
    await _eventually(r.b, OTHER, "forename")
    await _eventually(r.b, SANDBOX_PORTAL, "forename")
    # The portal's own override wins over its tenant's.
    await _set(r, GIVEN_NAME)
    await _eventually(r.b, SANDBOX_PORTAL, "given_name")
    assert "forename" in await _fields(r.b, OTHER)
    # A portal outside the tenant is untouched.
    assert "first_name" in await _fields(r.b, UNCONNECTED)
    # A portal whose properties cannot be read cannot join (nothing to validate against).
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await r.config.SetConfig(
            config_pb2.SetConfigRequest(
                scope=_scope(UNCONNECTED), kind=doc_pb2.CONFIG_KIND_TENANT, document=join
            ),
            timeout=60,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"portal {UNCONNECTED}" in (refused.value.details() or "")
    assert "first_name" in await _fields(r.b, UNCONNECTED)


async def _push(r: Replicas, request_id: str, name: str) -> mapper_pb2.PushRecordsResponse:
    fields = struct_pb2.Struct()
    fields.update({"first_name": name, "email": f"{name.lower()}@example.com"})
    return await r.a.PushRecords(  # type: ignore[no-any-return]
        mapper_pb2.PushRecordsRequest(
            request_id=request_id,
            portal_id=SANDBOX_PORTAL,
            records=[
                mapper_pb2.ExternalRecord(object_type="contacts", external_id=f"x-{name}", fields=fields)
            ],
            wait=True,
        ),
        timeout=60,
    )


async def test_a_pilot_set_through_the_config_service_refuses_pushes(replicas: Replicas) -> None:
    r = replicas
    pilot = doc_pb2.ConfigDocument(pilot=doc_pb2.PilotConfig(enabled=True, reason="onboarding"))
    await r.config.SetConfig(
        config_pb2.SetConfigRequest(scope=_scope(), kind=doc_pb2.CONFIG_KIND_PILOT, document=pilot),
        timeout=60,
    )
    refused: grpc.aio.AioRpcError | None = None
    for n in range(600):  # until the writer has the change (no push may slip through after it)
        try:
            await _push(r, f"pilot-{n}", f"Probe{n}")
        except grpc.aio.AioRpcError as exc:
            refused = exc
            break
        await asyncio.sleep(0.05)
    assert refused is not None and refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "read-only pilot" in (refused.details() or "") and "onboarding" in (refused.details() or "")
    info = error_info(refused)
    assert info is not None and info.reason == "PORTAL_PILOT"

    # Cleared (an empty document): writes flow again.
    await r.config.SetConfig(
        config_pb2.SetConfigRequest(scope=_scope(), kind=doc_pb2.CONFIG_KIND_PILOT), timeout=60
    )
    for n in range(600):
        try:
            reply = await _push(r, f"after-{n}", "Grace")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            await asyncio.sleep(0.05)
            continue
        assert reply.results[0].outcome in (
            mapper_pb2.PUSH_OUTCOME_WRITTEN,
            mapper_pb2.PUSH_OUTCOME_UNCHANGED,
        )
        break
    else:
        raise AssertionError("pushes still refused after the pilot was cleared")


async def test_the_cli_sets_shows_lists_and_rolls_back(replicas: Replicas, tmp_path: Path) -> None:
    from hubsync.cli import config as config_cli
    from hubsync.cli.__main__ import _parser

    good, bad = tmp_path / "contacts.yaml", tmp_path / "broken.yaml"
    good.write_text(GIVEN_NAME)
    bad.write_text(MISSING_PROPERTY.replace("contacts.yaml", "broken.yaml"))
    out = io.StringIO()
    console = Console(file=out, width=200)

    async def cli(*argv: str) -> int:
        args = _parser().parse_args(["config", *argv])
        return await config_cli.run(args, r.config_channel, console)

    r = replicas
    portal = str(SANDBOX_PORTAL)
    assert await cli("set", "--portal", portal, "mappings", str(good)) == 0
    assert await cli("set", "--portal", portal, "mappings", str(bad)) == 1
    assert await cli("set", "--portal", portal, "limits", "--burst", "40") == 0
    assert await cli("show", "--portal", portal, "mappings") == 0
    assert await cli("history", "--portal", portal, "mappings") == 0
    assert await cli("rollback", "--portal", portal, "mappings", "1") == 0
    text = out.getvalue()
    assert f"portal:{portal} mappings: version 1 stored" in text
    assert "INVALID_ARGUMENT" in text
    assert f"portal:{portal}/broken.yaml: contacts: fields[0].hubspot" in text  # file and field
    assert f"portal:{portal} limits: version 1 stored" in text
    assert f"portal:{portal}/contacts.yaml" in text  # show: where the contacts mapping comes from
    assert "(rollback to 1)" not in text  # history ran before the rollback
    assert f"portal:{portal} mappings: version 1 restored as version 2" in text


async def test_the_change_feed_of_a_portal_uses_its_override(
    redis_url: str, caller_tokens: dict[str, str]
) -> None:
    async with (
        suite(redis_url, caller_tokens) as s,
        running_mapper(redis_url, caller_tokens, writer_address=s.writer_address) as mapper,
        open_channel(mapper.address, caller_tokens["cli"]) as cli,
        open_channel(mapper.address, caller_tokens["client"]) as client,
    ):
        await config_pb2_grpc.ConfigServiceStub(cli).SetConfig(
            config_pb2.SetConfigRequest(
                scope=_scope(), kind=MAPPINGS, document=_mappings(("contacts.yaml", GIVEN_NAME))
            ),
            timeout=60,
        )
        call = mapper_pb2_grpc.MapperServiceStub(client).Subscribe(
            mapper_pb2.SubscribeRequest(consumer_group="crm", consumer="c1", object_types=["contacts"])
        )
        hs_id = await s.create_contact(email="ada@example.com", external_id="c-1", firstname="Ada")
        (change,) = await read_changes(call, 1, timeout=60)
        assert change.hubspot_id == hs_id and change.external_id == "c-1"
        assert dict(json_format.MessageToDict(change.fields)) == {
            "given_name": "Ada",
            "email": "ada@example.com",
        }
        call.cancel()


def _doc(**kind: Any) -> doc_pb2.ConfigDocument:
    return doc_pb2.ConfigDocument(**kind)


BIG = "# " + "x" * 300_000 + "\n" + GIVEN_NAME


@pytest.mark.parametrize(
    ("scope", "kind", "document", "field"),
    [
        (config_pb2.ConfigScope(), doc_pb2.CONFIG_KIND_PILOT, _doc(), "scope"),
        (config_pb2.ConfigScope(portal_id=1, tenant="a"), doc_pb2.CONFIG_KIND_PILOT, _doc(), "scope"),
        (config_pb2.ConfigScope(tenant="Not OK"), doc_pb2.CONFIG_KIND_PILOT, _doc(), "scope.tenant"),
        (config_pb2.ConfigScope(tenant="acme"), doc_pb2.CONFIG_KIND_TENANT, _doc(), "kind"),
        (_scope(1), doc_pb2.CONFIG_KIND_UNSPECIFIED, _doc(), "kind"),
        (
            _scope(1),
            doc_pb2.CONFIG_KIND_PILOT,
            _doc(limits=doc_pb2.LimitsConfig(burst_limit=5)),
            "document.limits",
        ),
        (_scope(1), doc_pb2.CONFIG_KIND_LIMITS, _doc(limits=doc_pb2.LimitsConfig()), "document.limits"),
        (
            _scope(1),
            doc_pb2.CONFIG_KIND_LIMITS,
            _doc(limits=doc_pb2.LimitsConfig(burst_limit=0)),
            "document.limits.burst_limit",
        ),
        (
            _scope(1),
            doc_pb2.CONFIG_KIND_LIMITS,
            _doc(limits=doc_pb2.LimitsConfig(daily_limit=-1)),
            "document.limits.daily_limit",
        ),
        (
            _scope(1),
            doc_pb2.CONFIG_KIND_PILOT,
            _doc(pilot=doc_pb2.PilotConfig(reason="a\nb")),
            "document.pilot.reason",
        ),
        (
            _scope(1),
            doc_pb2.CONFIG_KIND_TENANT,
            _doc(tenant=doc_pb2.TenantConfig(tenant="")),
            "document.tenant.tenant",
        ),
        (_scope(1), MAPPINGS, _mappings(), "portal:1: files"),
        (
            _scope(1),
            MAPPINGS,
            _mappings(("a.yaml", GIVEN_NAME), ("b.yaml", GIVEN_NAME)),
            "portal:1/b.yaml: object_type",
        ),
        (_scope(1), MAPPINGS, _mappings(("big.yaml", BIG)), "document"),
    ],
)
async def test_invalid_changes_name_the_field_and_store_nothing(
    redis_url: str,
    caller_tokens: dict[str, str],
    scope: config_pb2.ConfigScope,
    kind: int,
    document: doc_pb2.ConfigDocument,
    field: str,
) -> None:
    async with (
        running_mapper(redis_url, caller_tokens, inbound_enabled=False) as mapper,
        open_channel(mapper.address, caller_tokens["cli"]) as channel,
    ):
        stub = config_pb2_grpc.ConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetConfig(
                config_pb2.SetConfigRequest(scope=scope, kind=kind, document=document),  # type: ignore[arg-type]
                timeout=30,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in _violations(refused.value), _violations(refused.value)
        redis = redis_from_url(redis_url)
        assert await redis.keys("*config*") == []
        await redis.aclose()


SHOE_SIZE = GIVEN_NAME + "  - {hubspot: properties.shoe_size, external: shoe_size, transform: number}\n"


async def test_overrides_are_validated_against_each_portals_own_properties(replicas: Replicas) -> None:
    r = replicas
    # A custom property only portal 12345 has.
    created = await r.hubspot.post(
        "/crm/v3/properties/contacts",
        json={
            "name": "shoe_size",
            "label": "Shoe size",
            "type": "number",
            "fieldType": "number",
            "groupName": "contactinformation",
        },
    )
    assert created.status_code == 201, created.text
    assert await _set(r, SHOE_SIZE) == 1
    assert "shoe_size" in await _eventually(r.b, SANDBOX_PORTAL, "shoe_size")
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await _set(r, SHOE_SIZE, portal=OTHER)
    assert other.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(f"portal {OTHER}" in d and "shoe_size" in d for d in _violations(other.value).values())

    # A tenant's override must fit every portal that joined it.
    join = doc_pb2.ConfigDocument(tenant=doc_pb2.TenantConfig(tenant="acme"))
    for portal in (SANDBOX_PORTAL, OTHER):
        await r.config.SetConfig(
            config_pb2.SetConfigRequest(scope=_scope(portal), kind=doc_pb2.CONFIG_KIND_TENANT, document=join),
            timeout=60,
        )
    with pytest.raises(grpc.aio.AioRpcError) as tenant:
        await r.config.SetConfig(
            config_pb2.SetConfigRequest(
                scope=config_pb2.ConfigScope(tenant="acme"),
                kind=MAPPINGS,
                document=_mappings(("contacts.yaml", SHOE_SIZE)),
            ),
            timeout=60,
        )
    violations = _violations(tenant.value)
    assert any(f.startswith("tenant:acme/contacts.yaml") for f in violations), violations
    assert any(f"portal {OTHER}" in d for d in violations.values()), violations
    assert not any(f"portal {SANDBOX_PORTAL}" in d for d in violations.values()), violations
    assert "first_name" in await _fields(r.b, OTHER)
