"""``python -m hubsync.sandbox`` as a user runs it: a YAML config, flags, the printed URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[3]


def test_standalone_server_with_yaml_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "sandbox.yaml"
    cfg.write_text("portals:\n  - hub_id: 777\n    private_apps:\n      - token: pat-na1-cli\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "sandbox"), str(ROOT / "libs")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubsync.sandbox", "--port", "0", "--config", str(cfg), "--burst", "7"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("hubsync sandbox listening on http://127.0.0.1:")
        url = first.split()[-1]
        lines = [proc.stdout.readline() for _ in range(2)]
        assert "portal 777" in lines[0] and "pat-na1-cli" in lines[0]
        assert "client_id=hubsync-sandbox-client-id" in lines[1]
        r = httpx.get(f"{url}/crm/v3/objects/contacts", headers={"Authorization": "Bearer pat-na1-cli"})
        assert r.status_code == 200
        assert r.headers["x-hubspot-ratelimit-max"] == "7"
    finally:
        proc.terminate()
        proc.wait(10)
