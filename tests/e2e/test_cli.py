"""The ``hubsync`` command against the running suite, as an operator runs it: a separate process
with the service addresses and the ``cli`` credential in its environment."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from hubsync.api.writer.v1 import writer_pb2, writer_pb2_grpc
from hubsync.cli.demo import connect_sandbox_portal
from hubsync.cli.suite import SERVICES, Suite

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
PORTAL = 12345
DEFAULT_MAPPINGS = Path(__file__).resolve().parents[2] / "services/mapper/hubsync/mapper/default_mappings"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def suite(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Suite]:
    cluster = os.environ.get("HUBSYNC_TEST_REDIS") == "cluster"
    async with Suite(Path(tmp_path_factory.mktemp("cli")), tls=True, redis_cluster=cluster) as running:
        await connect_sandbox_portal(running)
        yield running


def hubsync(suite: Suite, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")}
    env |= {f"HUBSYNC_{s.upper()}_ADDRESS": suite.address(s) for s in SERVICES}
    env["HUBSYNC_CLI_TOKEN"] = suite.tokens["cli"] if token is None else token
    # The CLI talks mutual TLS like every internal client.
    cli = suite.tls["cli"]
    env |= {"HUBSYNC_TLS_CERT_FILE": str(cli.cert), "HUBSYNC_TLS_KEY_FILE": str(cli.key)}
    env["HUBSYNC_TLS_CA_FILE"] = str(cli.ca)
    env["COLUMNS"] = "250"
    return subprocess.run(
        [sys.executable, "-m", "hubsync.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.asyncio(loop_scope="module")
async def test_status_and_quota(suite: Suite) -> None:
    status = hubsync(suite, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("SERVING") == 4
    quota = hubsync(suite, "quota", "--portal", str(PORTAL))
    assert quota.returncode == 0, quota.stderr
    shown = json.loads(quota.stdout)
    assert int(shown["burst_limit"]) > 0, shown


@pytest.mark.asyncio(loop_scope="module")
async def test_a_wrong_credential_is_refused_with_a_clear_error(suite: Suite) -> None:
    refused = hubsync(suite, "quota", "--portal", str(PORTAL), token="not-the-cli-token")
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stdout


@pytest.mark.asyncio(loop_scope="module")
async def test_dead_letters_list_show_replay_purge(suite: Suite) -> None:
    # HubSpot refuses a property that does not exist: writer isolates the record and dead-letters it
    bad = writer_pb2.Write(
        record=writer_pb2.RecordWrite(
            operation=writer_pb2.WRITE_OPERATION_UPSERT,
            object_type="contacts",
            id="cli-dlq@example.com",
            id_property="email",
            properties={"no_such_property": "x"},
        )
    )
    # (only mapper may submit writes: the test writes as mapper would)
    async with suite.channel("writer", "mapper") as channel:
        reply = await writer_pb2_grpc.WriterServiceStub(channel).SubmitWrites(
            writer_pb2.SubmitWritesRequest(request_id="cli-dlq-1", portal_id=PORTAL, writes=[bad], wait=True),
            timeout=30,
        )
    assert writer_pb2.WriteStatus.Name(reply.results[0].status) == "WRITE_STATUS_DEAD_LETTERED"

    listed = hubsync(suite, "dlq", "list", "--portal", str(PORTAL))
    assert listed.returncode == 0, listed.stderr
    assert "400" in listed.stdout and "(1)" in listed.stdout
    async with suite.channel("writer") as channel:
        entries = await writer_pb2_grpc.WriterServiceStub(channel).ListDeadLetters(
            writer_pb2.ListDeadLettersRequest(portal_id=PORTAL)
        )
    (entry,) = entries.dead_letters
    assert entry.id in listed.stdout

    shown = hubsync(suite, "dlq", "show", "--portal", str(PORTAL), "--id", entry.id)
    assert shown.returncode == 0, shown.stderr
    assert "no_such_property" in shown.stdout

    # replaying it meets the same 400 at HubSpot: it is back in the queue, not lost
    replayed = hubsync(suite, "dlq", "replay", "--portal", str(PORTAL), "--id", entry.id)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1" in replayed.stdout
    for _ in range(100):  # the replay runs through the write queue, then dead-letters again
        async with suite.channel("writer") as channel:
            entries = await writer_pb2_grpc.WriterServiceStub(channel).ListDeadLetters(
                writer_pb2.ListDeadLettersRequest(portal_id=PORTAL)
            )
        if entries.dead_letters and entries.dead_letters[0].id != entry.id:
            break
        await asyncio.sleep(0.1)
    (again,) = entries.dead_letters
    assert again.id != entry.id and "no_such_property" in str(again)

    purged = hubsync(suite, "dlq", "purge", "--portal", str(PORTAL), "--all")
    assert purged.returncode == 0, purged.stderr
    assert "purged" in purged.stdout
    after = hubsync(suite, "dlq", "list", "--portal", str(PORTAL))
    assert "(0)" in after.stdout


@pytest.mark.asyncio(loop_scope="module")
async def test_backfill_writes_every_record(suite: Suite, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=suite.sandbox_url) as client:
        for i in range(5):
            reply = await client.post(
                "/_sandbox/ui/contacts",
                params={"portal": PORTAL},
                json={"properties": {"email": f"backfill{i}@example.com"}},
            )
            assert reply.status_code == 200
        stored = (await client.get("/_sandbox/objects/contacts", params={"portal": PORTAL})).json()
    objects = stored.get("results", stored) if isinstance(stored, dict) else stored
    live = {str(o["id"]) for o in objects if not o.get("archived")}
    out = tmp_path / "contacts.jsonl"
    done = hubsync(suite, "backfill", "--portal", str(PORTAL), "--object-type", "contacts", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checkpoint" in done.stdout
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in exported) == sorted(live)


@pytest.mark.asyncio(loop_scope="module")
async def test_mapping_validate(suite: Suite, tmp_path: Path) -> None:
    good = DEFAULT_MAPPINGS / "contacts.yaml"
    ok = hubsync(suite, "mapping", "validate", str(good), "--portal", str(PORTAL))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "valid" in ok.stdout
    broken = tmp_path / "contacts.yaml"
    broken.write_text(good.read_text().replace("firstname", "no_such_hubspot_property", 1))
    bad = hubsync(suite, "mapping", "validate", str(broken), "--portal", str(PORTAL))
    assert bad.returncode == 1
    assert "no_such_hubspot_property" in bad.stdout and "invalid" in bad.stdout


@pytest.mark.asyncio(loop_scope="module")
async def test_config_limits_pilot_and_mappings_reach_the_running_services(
    suite: Suite, tmp_path: Path
) -> None:
    portal = str(PORTAL)
    limits = hubsync(suite, "config", "set", "--portal", portal, "limits", "--burst", "37")
    assert limits.returncode == 0, limits.stdout + limits.stderr
    # Writer (another process) applies it: the limit in force for this portal becomes 37.
    for _ in range(300):
        quota = json.loads(hubsync(suite, "quota", "--portal", portal).stdout)
        if int(quota["burst_limit"]) == 37:
            break
        await asyncio.sleep(0.1)
    assert int(quota["burst_limit"]) == 37, quota
    pilot = hubsync(suite, "config", "set", "--portal", portal, "pilot", "on", "--reason", "e2e")
    assert pilot.returncode == 0, pilot.stdout + pilot.stderr
    for _ in range(300):
        quota = json.loads(hubsync(suite, "quota", "--portal", portal).stdout)
        if quota.get("pilot_mode"):
            break
        await asyncio.sleep(0.1)
    assert quota.get("pilot_mode") is True, quota
    assert hubsync(suite, "config", "set", "--portal", portal, "pilot", "--clear").returncode == 0

    override = tmp_path / "contacts.yaml"
    override.write_text((DEFAULT_MAPPINGS / "contacts.yaml").read_text().replace("first_name", "given_name"))
    typo = tmp_path / "typo.yaml"
    typo.write_text(override.read_text().replace("firstname", "no_such_hubspot_property", 1))
    assert hubsync(suite, "config", "set", "--portal", portal, "mappings", str(override)).returncode == 0
    refused = hubsync(suite, "config", "set", "--portal", portal, "mappings", str(typo))
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stdout and f"portal:{portal}/typo.yaml" in refused.stdout
    shown = hubsync(suite, "config", "show", "--portal", portal)
    assert shown.returncode == 0 and "version 1" in shown.stdout and f"portal:{portal}" in shown.stdout
    history = hubsync(suite, "config", "history", "--portal", portal, "mappings")
    assert history.returncode == 0 and "contacts.yaml" in history.stdout
    cleared = hubsync(suite, "config", "set", "--portal", portal, "mappings", "--clear")
    assert cleared.returncode == 0 and "version 2" in cleared.stdout
    back = hubsync(suite, "config", "rollback", "--portal", portal, "mappings", "1")
    assert back.returncode == 0 and "restored as version 3" in back.stdout, back.stdout
    # Leave the suite as it was for the other tests.
    assert hubsync(suite, "config", "set", "--portal", portal, "mappings", "--clear").returncode == 0
    assert hubsync(suite, "config", "set", "--portal", portal, "limits", "--clear").returncode == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_connect_prints_the_start_link_and_keys_rotate(suite: Suite) -> None:
    begun = hubsync(suite, "connect", "--tenant", "acme")
    assert begun.returncode == 0, begun.stderr
    url = next(line for line in begun.stdout.splitlines() if line.startswith("http"))
    assert url.startswith(f"{suite.ingress_url}/oauth/start?ticket=")
    rotated = hubsync(suite, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted" in rotated.stdout
