"""Start-up refuses bad configuration: exit 2 naming the variable or every mapping problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _run(
    env: dict[str, str], redis_url: str, caller_tokens: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HUBSYNC_")}
    full |= {
        "HUBSYNC_REDIS_URL": redis_url,
        "HUBSYNC_CALLER_NAME": "mapper",
        "HUBSYNC_CALLER_TOKENS": json.dumps(caller_tokens),
        "HUBSYNC_GRPC_PORT": "0",
        "HUBSYNC_WRITER_ADDRESS": "127.0.0.1:1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "hubsync.mapper"], env=full, capture_output=True, text=True, timeout=30
    )


def test_bad_setting_exits_2_naming_the_variable(redis_url: str, caller_tokens: dict[str, str]) -> None:
    done = _run({"HUBSYNC_MAPPER_COALESCE_WINDOW_MS": "-5"}, redis_url, caller_tokens)
    assert done.returncode == 2
    assert "HUBSYNC_MAPPER_COALESCE_WINDOW_MS" in done.stderr


def test_bad_mappings_exit_2_listing_every_problem(
    redis_url: str, caller_tokens: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "deals.yaml").write_text(
        "object_type: deals\nid: {external: id, hubspot: external_id}\nfields: []\n"
    )
    (tmp_path / "contacts.yaml").write_text("object_type: contacts\n")
    done = _run({"HUBSYNC_MAPPER_MAPPINGS_DIR": str(tmp_path)}, redis_url, caller_tokens)
    assert done.returncode == 2
    assert "HUBSYNC_MAPPER_MAPPINGS_DIR" in done.stderr
    assert f"{tmp_path / 'deals.yaml'}:3: fields" in done.stderr
    assert f"{tmp_path / 'contacts.yaml'}:1: id" in done.stderr
