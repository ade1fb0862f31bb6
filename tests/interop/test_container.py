"""The application image (``Dockerfile``) and the stack (``compose.yaml``), checked
statically: no Docker engine runs here. What they COPY exists and survives
``.dockerignore``; the builder stage builds the native core, the runtime stage is Python
3.11 and installs with ``constraints.txt``; every ``skewless`` command compose runs parses
with the real CLI parser and is written in the README; the services reference each other
(addresses, listeners, dependencies, volumes) consistently."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from features.settings import Settings
from skewless.cli import _parser

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
SETTINGS_VARS = {f"SKEWLESS_{f.name.upper()}" for f in dataclasses.fields(Settings)}
APP_IMAGE = "skewless:local"


# ---------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, op: str) -> list[str]:
        return [rest for o, rest in self.instructions if o == op]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also inside a continuation, as Docker does
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        op, _, rest = buf.partition(" ")
        out.append((op.upper(), rest.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a line continuation"
    return out


def stages(text: str) -> list[Stage]:
    args: dict[str, str] = {}
    found: list[Stage] = []
    for op, rest in instructions(text):
        if op == "ARG" and not found:
            name, _, default = rest.partition("=")
            args[name] = default
        elif op == "FROM":
            words = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            found.append(Stage(words[0], name))
        else:
            assert found, f"{op} before the first FROM"
            found[-1].instructions.append((op, rest))
    return found


def copy_parts(rest: str) -> tuple[dict[str, str], list[str], str]:
    """COPY/ADD arguments: ({flag: value}, sources, destination)."""
    words = shlex.split(rest)
    flags = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    if words and words[0].startswith("["):
        words = json.loads(" ".join(words))
    return flags, words[:-1], words[-1]


def dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, line.lstrip("!").strip("/")))
    return rules


def ignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent folder
    excludes everything under it (``**`` matches any number of folders)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for negate, pattern in rules:
        pats = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, "*/" + pat) for p in prefixes
               for pat in pats):  # fmt: skip
            out = not negate
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return stages((REPO / "Dockerfile").read_text())


def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile: list[Stage]) -> None:
    rules = dockerignore()
    names = [s.name for s in dockerfile]
    copied = 0
    for i, stage in enumerate(dockerfile):
        for rest in stage.args("COPY") + stage.args("ADD"):
            flags, sources, _ = copy_parts(rest)
            if "from" in flags:  # another stage, or an image for its toolchain
                assert flags["from"] in names[:i], f"COPY --from={flags['from']}: no such stage"
                continue
            for src in sources:
                matches = list(REPO.glob(src.rstrip("/"))) if "*" in src else [REPO / src]
                assert matches and all(m.exists() for m in matches), f"COPY {src}: not in repo"
                files = [f for m in matches for f in ([m] if m.is_file() else m.rglob("*.*"))]
                kept = [f for f in files if not ignored(str(f.relative_to(REPO)), rules)]
                assert kept, f"COPY {src}: everything under it is in .dockerignore"
                copied += 1
    assert copied >= 5


def test_the_wheel_gets_every_python_package(dockerfile: list[Stage]) -> None:
    """Each top-level package pyproject packages is copied into the stage that builds the
    wheel (a package added later and not copied would be missing from the image)."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    find = find["packages"]["find"]
    namespaces = find.get("namespaces", True)  # pyproject's default: folders without __init__
    packages = {
        d.name for d in REPO.iterdir()
        if any(fnmatch.fnmatch(d.name, p) for p in find["include"])
        and ((d / "__init__.py").is_file() or (namespaces and any(d.glob("*.py"))))
    }  # fmt: skip
    assert {"features", "serving", "skewless"} <= packages
    builder = next(s for s in dockerfile if any("wheel" in r and " ." in r for r in s.args("RUN")))
    copied = {src.strip("/") for rest in builder.args("COPY") for src in copy_parts(rest)[1]}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert {"pyproject.toml", "README.md", "native"} <= copied


def test_the_wheel_builds_from_what_the_builder_copies(
    dockerfile: list[Stage], tmp_path: Path
) -> None:
    """The builder's context, rebuilt from its COPY lines and .dockerignore, makes a wheel
    with every module of the source tree (the native core's cargo build is left out)."""
    rules = dockerignore()
    builder = next(s for s in dockerfile if any("wheel" in r and " ." in r for r in s.args("RUN")))
    ctx = tmp_path / "ctx"
    for rest in builder.args("COPY"):
        flags, sources, dest = copy_parts(rest)
        if "from" in flags or "native" in sources[0]:
            continue
        for src in sources:
            for f in [REPO / src] if (REPO / src).is_file() else (REPO / src).rglob("*"):
                rel = str(f.relative_to(REPO))
                if f.is_file() and not ignored(rel, rules):
                    target = ctx / (rel if dest.endswith("/") or dest == "./" else dest)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, target)
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), str(ctx)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (wheel,) = (tmp_path / "wheels").glob("skewless-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = {n.split("/")[0] for n in names if n.endswith(".py")}
    modules = {
        str(f.relative_to(REPO)) for p in packaged for f in (REPO / p).rglob("*.py")
        if "__pycache__" not in f.parts and not ignored(str(f.relative_to(REPO)), rules)
    }  # fmt: skip
    assert modules - names == set(), f"missing from the wheel: {sorted(modules - names)[:5]}"
    assert {"features", "flows", "serving", "skewless"} <= packaged


def test_builder_builds_the_native_core_and_runtime_is_slim_python_311(
    dockerfile: list[Stage],
) -> None:
    *builders, runtime = dockerfile
    native = [s for s in builders if any("./native" in r or "maturin" in r for r in s.args("RUN"))]
    assert native, "no builder stage builds native/ (maturin)"
    cargo = [copy_parts(r) for r in native[0].args("COPY")]
    assert any(dest == "/usr/local/cargo" for _, _, dest in cargo), "builder has no Rust toolchain"
    assert runtime.base.startswith("python:3.11-slim"), runtime.base
    assert not any("cargo" in r or "rust" in r for r in runtime.args("COPY")), "toolchain shipped"
    wheels = [copy_parts(r) for r in runtime.args("COPY")]
    assert any(f.get("from") == native[0].name for f, _, _ in wheels), "runtime takes no wheels"
    constraints = next(d for _, s, d in wheels if s == ["constraints.txt"])
    assert any(f"-c {constraints}" in r and "pip install" in r for r in runtime.args("RUN"))
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    entry = json.loads(runtime.args("ENTRYPOINT")[-1])
    assert entry[0] in scripts, f"ENTRYPOINT {entry}: not a console script of skewless"


def test_dockerfile_environment_is_settings(dockerfile: list[Stage]) -> None:
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(dockerfile[-1].args("ENV"))))
    names = {k for k in env if k.startswith("SKEWLESS_")}
    assert names and names <= SETTINGS_VARS, f"not settings: {sorted(names - SETTINGS_VARS)}"
    Settings.from_env(env)


# ---------------------------------------------------------------- compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    import yaml  # PyYAML: a Feast dependency

    doc: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return doc


def _app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s.get("image") == APP_IMAGE}


def test_compose_runs_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "stream", "serve"} <= set(services)
    roles = services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert set(roles.split(",")) == {"broker", "controller"}, "Kafka must run in KRaft mode"
    assert "zookeeper" not in (REPO / "compose.yaml").read_text().lower()
    for name in ("stream", "serve"):
        assert services[name]["command"][0] == name
        assert not services[name].get("profiles"), f"{name} must run by default"
    for name, s in _app_services(compose).items():
        assert s.get("build") == ".", f"{name}: builds from the repo's Dockerfile"


def test_every_command_is_the_readmes_and_parses(compose: dict[str, Any]) -> None:
    parser = _parser()
    for name, s in _app_services(compose).items():
        cmd = s["command"]
        assert isinstance(cmd, list) and all(isinstance(w, str) for w in cmd), name
        try:
            parser.parse_args(cmd)
        except SystemExit as exc:
            pytest.fail(f"{name}: `skewless {' '.join(cmd)}` does not parse ({exc})")
        line = "skewless " + " ".join(cmd)
        assert f"`{line}`" in README or f"{line}\n" in README, f"{name}: `{line}` not in README"


def test_environment_is_settings_and_addresses_point_at_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kafka_env = services["kafka"]["environment"]
    advertised = {
        urlparse(u.strip()).netloc for u in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    for name, s in _app_services(compose).items():
        env = {k: str(v) for k, v in s["environment"].items()}
        names = {k for k in env if k.startswith("SKEWLESS_")}
        assert names <= SETTINGS_VARS, f"{name}: not settings: {sorted(names - SETTINGS_VARS)}"
        settings = Settings.from_env(env)
        assert settings.kafka_bootstrap in advertised, f"{name}: Kafka address not advertised"
        assert settings.kafka_bootstrap.split(":")[0] in services
        redis = urlparse(settings.redis_url)
        assert (redis.hostname, redis.port) == ("redis", 6379), f"{name}: {settings.redis_url}"
        assert str(settings.data_dir) == "/data" and settings.registry_dir.parent == Path("/data")
    serve_port = Settings.from_env(services["serve"]["environment"]).grpc_address.split(":")[-1]
    published = [p.split(":")[-1] for p in services["serve"]["ports"]]
    assert serve_port in published, "serve's gRPC port is not published"


def test_dependencies_volumes_and_ports_are_consistent(compose: dict[str, Any]) -> None:
    services = compose["services"]
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, s in services.items():
        for dep, how in (s.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert how["condition"] in conditions, f"{name} -> {dep}: {how}"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
            if not s.get("profiles"):
                assert not services[dep].get("profiles"), f"{name} needs {dep} of a profile"
        for volume in s.get("volumes") or []:
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in (compose.get("volumes") or {}), f"{name}: volume {source}"
        for port in s.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} not on loopback only"
    for name in ("stream", "serve"):
        assert {"kafka", "redis"} <= set(services[name]["depends_on"])


def test_readme_has_the_container_section() -> None:
    section = README.split("## Container image", 1)
    assert len(section) == 2, "README: no 'Container image' section"
    for words in ("docker build", "docker compose up", "compose.yaml", "Dockerfile"):
        assert words in section[1].split("\n## ", 1)[0], f"Container image section: {words}"
