"""docs/security.md agrees with the code, and the secure defaults hold without a running service."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"


def test_policy_table_is_the_code() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "policy_table.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_security_doc_has_its_sections() -> None:
    headings = re.findall(r"^## (.+)$", DOC.read_text(), flags=re.MULTILINE)
    for wanted in ("Threat model", "Who may call what", "Caller credentials"):
        assert wanted in headings


def test_the_image_defaults_to_production() -> None:
    runtime = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    assert re.search(r"^ENV\s+(.*\s)?HUBSYNC_ENVIRONMENT=production\b", runtime, flags=re.MULTILINE)


def test_no_credentials_need_the_opt_in_which_production_refuses() -> None:
    from hubsync.core.callers import INSECURE_OPT_IN, TOKENS_VARIABLE, credential_problems

    assert [v for v, _ in credential_problems({}, production=False, insecure_opt_in=False)] == [
        TOKENS_VARIABLE
    ]
    assert credential_problems({}, production=False, insecure_opt_in=True) == []
    refused = credential_problems({}, production=True, insecure_opt_in=True)
    assert [v for v, _ in refused] == [INSECURE_OPT_IN]


def test_production_refuses_short_tokens_but_not_digests() -> None:
    from hubsync.core.callers import MIN_TOKEN_LENGTH, TOKENS_VARIABLE, credential_problems, hashed

    short = "x" * (MIN_TOKEN_LENGTH - 1)
    good = "y" * MIN_TOKEN_LENGTH
    problems = credential_problems(
        {"cli": short, "writer": good, "mapper": hashed("z")}, production=True, insecure_opt_in=False
    )
    assert len(problems) == 1
    variable, message = problems[0]
    assert variable == TOKENS_VARIABLE and "'cli'" in message and short not in message
    # development keeps accepting them (tests and `hubsync run` generate their own)
    assert credential_problems({"cli": "x"}, production=False, insecure_opt_in=False) == []
