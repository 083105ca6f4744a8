"""What the tenant benchmarks (run.py, drain.py, fairness.py, writer.py) share: the command-line
options of a suite run, running it in a work folder and reporting its result JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

Run = Callable[[argparse.Namespace, Path], Coroutine[Any, Any, dict[str, Any]]]


def add_env_option(parser: argparse.ArgumentParser) -> None:
    """``--env SERVICE:NAME=VALUE``, repeatable: an extra setting of one service."""
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="SERVICE:NAME=VALUE",
        help="an extra setting of one service, e.g. mapper:HUBSYNC_MAPPER_OBJECT_TYPES_REFRESH_S=0",
    )


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--workdir`` (keep the suite's logs there) and ``--out`` (also write the result there)."""
    parser.add_argument("--workdir", type=Path, help="keep the suite's logs here")
    parser.add_argument("--out", type=Path, help="also write the result JSON here")


def run_in_workdir(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    """``run(args, folder)`` in ``--workdir``, or in a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        where = args.workdir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        return asyncio.run(run(args, where))


def report(result: dict[str, Any], script: str, out: Path | None) -> None:
    """Adds the command and the machine to ``result``, prints it as JSON and writes it to ``out``."""
    result["command"] = " ".join([f".venv/bin/python {script}", *sys.argv[1:]])
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")
