"""What can be checked of the Dockerfile without a Docker engine: stages, user, entry points, and
the supply chain (base image by digest, every dependency from a lock file with hashes)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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
    arguments: dict[str, str] = {}
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "ARG" and not stages and "=" in args:
            name, _, default = args.partition("=")
            arguments[name.strip()] = default.strip()
        elif keyword == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert match
            base = re.sub(r"\$\{(\w+)\}", lambda m: arguments[m.group(1)], match.group(1))
            stages.append(Stage(base=base, name=match.group(2)))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return _stages()


def test_multi_stage_on_slim_python_311_pinned_by_digest(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        # A tag can be moved to other content; a digest cannot. The tag stays for readers.
        assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", stage.base), stage.base
    final = stages[-1]
    # The runtime takes the built virtualenv from an earlier stage, not a fresh install.
    copies = final.all("COPY")
    assert any(re.match(r"--from=(\w+)", c) for c in copies)
    assert all("pyproject" not in c for c in copies), "the runtime stage must not get the source tree"


def test_build_installs_the_project_without_codegen(stages: list[Stage]) -> None:
    build_runs = " ".join(" ".join(s.all("RUN")) for s in stages[:-1])
    assert re.search(r"pip wheel --no-build-isolation --no-deps --wheel-dir /wheels \.", build_runs)
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
        "HUBSYNC_GRPC_HEALTH_PORT": "50050",
        "HUBSYNC_INGRESS_HTTP_PORT": "8080",
    }.items():
        assert f"{variable}={value}" in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text, "the root filesystem is read-only"


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in ignore, "deny by default"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "requirements", "libs", "services"}


# --- supply chain ----------------------------------------------------------------------------

LOCKS = ROOT / "requirements"


def _pip_installs(stages: list[Stage]) -> list[str]:
    commands = []
    for stage in stages:
        for run in stage.all("RUN"):
            commands += [c.strip() for c in run.split("&&") if re.search(r"pip (install|wheel)\b", c)]
    return commands


def test_every_install_comes_from_a_lock_with_hashes_or_takes_no_dependencies(stages: list[Stage]) -> None:
    """pip fetches nothing unpinned: dependencies only from the lock files (hashes required), the
    project itself (and its wheel build) without dependencies or build isolation."""
    installs = _pip_installs(stages)
    locked = [c for c in installs if "--require-hashes" in c]
    assert any("-r requirements/runtime.lock" in c for c in locked), installs
    assert any("-r requirements/build.lock" in c for c in locked), installs
    for command in installs:
        if "--require-hashes" in command:
            continue
        assert "--no-deps" in command, f"unlocked install: {command}"
        if "pip wheel" in command:
            assert "--no-build-isolation" in command, f"isolated build fetches its backend: {command}"
    # The locked dependencies are installed before the project's source is copied in (layer cache).
    build = stages[0]
    order = [kw + " " + args for kw, args in build.instructions]
    lock_step = next(i for i, line in enumerate(order) if "requirements/runtime.lock" in line)
    source_step = next(i for i, line in enumerate(order) if line.startswith("COPY libs/"))
    assert lock_step < source_step


def _locked(path: Path) -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, hashes) of a pip-compile/uv lock file."""
    entries: dict[str, tuple[Version, list[str]]] = {}
    current = ""
    for line in path.read_text().splitlines():
        pinned = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if pinned:
            current = canonicalize_name(pinned.group(1))
            entries[current] = (Version(pinned.group(2)), [])
        for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            entries[current][1].append(digest)
    return entries


def _covers(lock: dict[str, tuple[Version, list[str]]], requirement: Requirement, where: str) -> None:
    name = canonicalize_name(requirement.name)
    assert name in lock, f"{where}: {requirement} is not in the lock"
    version, hashes = lock[name]
    assert requirement.specifier.contains(version, prereleases=True), (
        f"{where}: {name}=={version} vs {requirement}"
    )
    assert hashes, f"{where}: {name} has no hash"


def test_lock_covers_every_runtime_dependency_with_hashes() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = _locked(LOCKS / "runtime.lock")
    assert all(hashes for _, hashes in lock.values()), "every locked package carries its sha256"
    linux = {str(k): str(v) for k, v in default_environment().items()}
    linux |= {"sys_platform": "linux", "platform_system": "Linux"}
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        _covers(lock, requirement, "runtime.lock")
        # An extra (uvicorn[standard]) brings packages of its own: they are locked too.
        for extra in requirement.extras:
            for sub in importlib.metadata.requires(requirement.name) or []:
                dependency = Requirement(sub)
                if dependency.marker is not None and dependency.marker.evaluate({**linux, "extra": extra}):
                    _covers(lock, dependency, f"runtime.lock ({requirement.name}[{extra}])")
    build = _locked(LOCKS / "build.lock")
    for line in pyproject["build-system"]["requires"]:
        _covers(build, Requirement(line), "build.lock")
