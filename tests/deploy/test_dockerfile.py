"""What can be checked of the Dockerfile without a Docker engine: stages, user, entry points."""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = ("auth", "ingress", "mapper", "writer")
# Compilers, build systems and package managers' install commands have no place in the runtime.
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|build-essential|python3?-dev|libc6?-dev|cargo|rustc|"
    r"apt-get install|apt install|apk add|pip install|uv pip|poetry|hatch build)\b"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def _stages() -> list[Stage]:
    stages: list[Stage] = []
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert match
            stages.append(Stage(base=match.group(1), name=match.group(2)))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return _stages()


def test_multi_stage_on_slim_python_311(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    text = DOCKERFILE.read_text()
    assert re.search(r"ARG PYTHON_VERSION=3\.11\b", text)
    for stage in stages:
        assert stage.base.startswith("python:") and stage.base.endswith("-slim"), stage.base
    final = stages[-1]
    # The runtime takes the built virtualenv from an earlier stage, not a fresh install.
    copies = final.all("COPY")
    assert any(re.match(r"--from=(\w+)", c) for c in copies)
    assert all("pyproject" not in c for c in copies), "the runtime stage must not get the source tree"


def test_build_installs_the_project_without_codegen(stages: list[Stage]) -> None:
    build_runs = " ".join(" ".join(s.all("RUN")) for s in stages[:-1])
    assert re.search(r"pip install \.", build_runs)
    assert "grpc_tools" not in build_runs and "buf generate" not in build_runs
    copied = " ".join(" ".join(s.all("COPY")) for s in stages[:-1])
    # Everything the wheel is built from (pyproject's only-include) is copied in.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    roots = {p.split("/")[0] for p in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["only-include"]}
    for root in roots | {"pyproject.toml", "README.md"}:
        assert root in copied, f"{root} is not copied into the build stage"


def test_final_stage_has_no_build_tools(stages: list[Stage]) -> None:
    final = stages[-1]
    for keyword, args in final.instructions:
        if keyword == "RUN":
            assert not BUILD_TOOLS.search(args), f"build tooling in the runtime stage: {args}"


def test_runs_as_numeric_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the runtime stage sets no USER"
    user = users[-1]
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    assert match, f"USER {user!r} must be numeric so runAsNonRoot can verify it"
    assert int(match.group(1)) != 0 and (match.group(2) is None or int(match.group(2)) != 0)
    # The chart runs the same uid.
    values = (ROOT / "deploy" / "helm" / "hubsync" / "values.yaml").read_text()
    assert f"runAsUser: {match.group(1)}" in values


def _named_entry_points() -> tuple[set[str], list[str]]:
    text = DOCKERFILE.read_text()
    modules = set(re.findall(r"python -m (hubsync(?:\.[a-z_]+)+)", text))
    cmd = [args for kw, args in _instructions(text) if kw in {"CMD", "ENTRYPOINT"}]
    return modules, cmd


def test_names_every_service_entry_point() -> None:
    modules, _ = _named_entry_points()
    assert {f"hubsync.{s}" for s in SERVICES} <= modules


@pytest.mark.parametrize("service", SERVICES)
def test_service_entry_point_exists(service: str) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["only-include"]
    package_root = f"services/{service}/hubsync"
    assert package_root in included, f"pyproject does not package {package_root}"
    package = ROOT / package_root / service
    if not any(package.glob("*.py")):
        pytest.skip(f"hubsync.{service} is not written yet ({package.relative_to(ROOT)} has no module)")
    assert (package / "__main__.py").is_file(), f"python -m hubsync.{service} needs {package}/__main__.py"


def test_cli_console_script_exists() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = pyproject["project"]["scripts"]["hubsync"]
    module, _, function = target.partition(":")
    assert module == "hubsync.cli.__main__"
    source = ROOT / "libs" / "hubsync" / "cli" / "__main__.py"
    tree = ast.parse(source.read_text())
    assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    # The default command is the CLI, found on PATH in the virtualenv.
    _, cmd = _named_entry_points()
    assert cmd and cmd[-1].startswith('["hubsync"')
    assert re.search(r'ENV PATH="/opt/hubsync/bin:', DOCKERFILE.read_text())


def test_container_defaults_match_the_chart() -> None:
    text = DOCKERFILE.read_text()
    for variable, value in {
        "HUBSYNC_GRPC_HOST": "0.0.0.0",
        "HUBSYNC_GRPC_PORT": "50051",
        "HUBSYNC_METRICS_PORT": "9464",
        "HUBSYNC_INGRESS_HTTP_PORT": "8080",
    }.items():
        assert f"{variable}={value}" in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text, "the root filesystem is read-only"


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in ignore, "deny by default"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "libs", "services", "sandbox"}
