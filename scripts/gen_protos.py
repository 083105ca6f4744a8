"""Generates Python code and .pyi stubs for every .proto under protos/ into libs/.

Usage: python scripts/gen_protos.py [--check]

--check regenerates into a temporary folder and fails when the committed code differs, so CI
catches a .proto edited without regenerating.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "libs" / "hubsync" / "api"


def generate(out_root: Path) -> None:
    import grpc_tools

    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    bindir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)
    api = out_root / "hubsync" / "api"
    for folder in [api, *(p for p in api.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="fail when committed code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "hubsync" / "api"
        if args.check:
            diff = _differences(fresh, OUT)
            if diff:
                print("generated code is stale; run: python scripts/gen_protos.py", file=sys.stderr)
                for line in diff:
                    print(f"  {line}", file=sys.stderr)
                return 1
            print("generated code is up to date")
            return 0
        if OUT.exists():
            shutil.rmtree(OUT)
        shutil.copytree(fresh, OUT)
        print(f"generated {sum(1 for _ in OUT.rglob('*.py*'))} files into {OUT.relative_to(ROOT)}")
    return 0


def _differences(a: Path, b: Path) -> list[str]:
    out = []
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    for rel in sorted(files_a ^ files_b):
        out.append(f"only in {'generated' if rel in files_a else 'committed'}: {rel}")
    for rel in sorted(files_a & files_b):
        if not filecmp.cmp(a / rel, b / rel, shallow=False):
            out.append(f"differs: {rel}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
