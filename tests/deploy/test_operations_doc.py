"""docs/operations.md answers every alert the chart can fire and covers the day-2 procedures."""

from __future__ import annotations

import re

import pytest

from hubsync.ingress.committer import COMMIT_SPAN
from hubsync.ingress.webhooks import SPAN_NAME as WEBHOOK_SPAN
from tests.deploy.chart import alerts, render_file
from tests.deploy.opsdoc import DOC, anchor, anchors
from tests.deploy.opsdoc import sections as doc_sections


@pytest.fixture(scope="module")
def sections() -> dict[str, str]:
    return doc_sections()


def test_every_alert_has_a_runbook_section(sections: dict[str, str]) -> None:
    for name, rule in alerts(render_file("production-values.yaml")).items():
        assert name in sections, f"docs/operations.md has no section for alert {name}"
        body = sections[name]
        assert "**Means.**" in body and "**Do.**" in body, f"{name}: say what it means and what to do"
        link = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert link == anchor(name)


def test_internal_links_resolve(sections: dict[str, str]) -> None:
    known = anchors()
    for link in re.findall(r"\]\(#([^)]+)\)", DOC.read_text()):
        assert link in known, f"broken link #{link}"


@pytest.mark.parametrize(
    ("section", "must_mention"),
    [
        (
            "Replaying the dead-letter queue",
            ["hubsync dlq list", "hubsync dlq show", "hubsync dlq replay", "hubsync dlq purge"],
        ),
        ("Rotating the encryption key", ["hubsync keys rotate", "RotateKeys", "active"]),
        ("Rotating webhook secrets", ["webhookSecrets", "24 hours"]),
        ("Re-authorizing a portal", ["hubsync connect", "/oauth/callback"]),
        ("Scaling", ["KEDA", "never raise", "rateLimitPreset"]),
        ("Backfills", ["hubsync backfill", "--checkpoint"]),
        (
            "Following one change end to end",
            [
                COMMIT_SPAN,  # the names the services really give their spans
                WEBHOOK_SPAN,
                "mapper.inbound",
                "HubSpot POST /crm/v3/objects/{objectType}/batch/read",
                "HTTP client spans",
                "hubsync.portal_id",
                "hubsync.object_type",
                "hubsync.object_id",
                "hubsync.event_id",
                "mapper.outbound",
                "writer.queued",
                "hubsync.external_id",
                "Jaeger",
                "Tempo",
            ],
        ),
        (
            # the local trace view, with a real capture of one change end to end
            "On your machine: `hubsync trace`",
            [
                "hubsync trace",
                "--html",
                "traces.sqlite3",
                "ingress.commit (producer)",
                "└─ mapper.inbound ⇢redis",
                "└─ HubSpot POST /crm/v3/objects/{objectType}/batch/read (client)",
                "](images/trace-waterfall.png)",
                "Why no trace UI is bundled",
            ],
        ),
    ],
)
def test_procedures_are_documented(sections: dict[str, str], section: str, must_mention: list[str]) -> None:
    assert section in sections
    body = sections[section]
    for words in must_mention:
        assert words in body, f"{section}: mention {words!r}"
