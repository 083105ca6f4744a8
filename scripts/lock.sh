#!/usr/bin/env bash
# Refreshes the image's lock files (pinned versions with sha256 hashes) from pyproject.toml:
#   requirements/runtime.lock  every runtime dependency, for `pip install --require-hashes`
#   requirements/build.lock    the build backend the wheel is built with (no build isolation)
# Needs uv (pip install uv) and the package index; commit both files with the change that
# needed them. tests/deploy/test_dockerfile.py checks the runtime lock covers pyproject.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
common=(--universal --python-version 3.11 --generate-hashes --annotation-style line
        --custom-compile-command "scripts/lock.sh")
"$UV" pip compile pyproject.toml "${common[@]}" -o requirements/runtime.lock
"$UV" pip compile requirements/build.in "${common[@]}" -o requirements/build.lock
