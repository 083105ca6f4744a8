"""`hubsync tokens split`: the per-component files for callerTokens.existingSecret hold one token each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hubsync.core.callers import CallerRegistry, hashed, own_token


def test_each_component_file_holds_its_own_token_and_digests_of_the_others(tmp_path: Path) -> None:
    everyone = {
        name: f"{name}-token-0123456789abcdef" for name in ("auth", "ingress", "mapper", "writer", "cli")
    }
    source = tmp_path / "tokens.json"
    source.write_text(json.dumps(everyone))
    proc = subprocess.run(
        [sys.executable, "-m", "hubsync.cli", "tokens", "split", str(source), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for component in ("auth", "ingress", "mapper", "writer"):
        path = tmp_path / "out" / f"{component}.json"
        assert path.stat().st_mode & 0o077 == 0, "readable by its owner only"
        view = json.loads(path.read_text())
        assert set(view) == set(everyone)
        assert own_token(view, component) == everyone[component]
        for other in set(everyone) - {component}:
            assert view[other] == hashed(everyone[other])
            assert own_token(view, other) is None
        # The view still verifies every caller.
        registry = CallerRegistry(view)
        assert all(registry.identify(token) == name for name, token in everyone.items())
        assert everyone["writer"] not in path.read_text() or component == "writer"
