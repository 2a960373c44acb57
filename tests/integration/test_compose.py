"""The deployment files, checked without a Docker engine.

docker-compose.yml, Dockerfile and .env.example are only exercised for real by
`docker compose up`, which this machine and CI cannot run. So these tests check what can go
wrong in them without an engine: a command or option the CLI does not know, a dependency
condition, a required variable that .env.example forgets, a setting that never reaches the
containers, and the migration the `migrate` service runs.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from tests.conftest import service_missing
from worker.cli import cli
from worker.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

APP_SERVICES = ("migrate", "api", "worker", "intake", "beat")
LONG_RUNNING = ("api", "worker", "intake", "beat")
SHARED_ENV_KEY = "x-pagerbridge-env"
CLI_TIMEOUT = 60  # seconds; one CLI start imports Celery, FastAPI and SQLAlchemy

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME, and $$ for a
# literal dollar: the subset of Compose's interpolation this file may use (no nesting).
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[_A-Za-z][_A-Za-z0-9]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[_A-Za-z][_A-Za-z0-9]*))"
)
REQUIRED_VARIABLE = re.compile(r"\$\{([_A-Za-z][_A-Za-z0-9]*):?\?")
# `NAME=value` is set; `# NAME=value` documents an optional setting at its default.
ENV_LINE = re.compile(r"^(?P<comment>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


# -- helpers ----------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _built_here(service: Mapping[str, Any]) -> bool:
    build = service.get("build")
    context = build.get("context") if isinstance(build, dict) else build
    return context in (".", "./")


def _env_example() -> tuple[dict[str, str], set[str]]:
    """(.env.example's set variables, every variable it documents, set or commented out)."""
    assigned: dict[str, str] = {}
    documented: set[str] = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = ENV_LINE.match(line.strip())
        if not match:
            continue
        documented.add(match["name"])
        if not match["comment"]:
            assigned[match["name"]] = match["value"].strip().strip("\"'")
    return assigned, documented


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one string, as `docker compose` would with ``env`` as .env."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        current = env.get(name)
        op, arg = match["op"], match["arg"] or ""
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in ("-", ":-") and unset:
            return arg
        if op in ("?", ":?") and unset:
            raise AssertionError(f"docker-compose.yml needs {name}: {arg}")
        return current or ""

    return INTERPOLATION.sub(substitute, value)


def _strings(node: object) -> list[str]:
    """Every string value in a parsed YAML document (not its comments, which compose ignores)."""
    if isinstance(node, dict):
        return [text for value in node.values() for text in _strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in _strings(value)]
    return [node] if isinstance(node, str) else []


def _referenced_variables(node: object) -> set[str]:
    """The variables the values in ``node`` interpolate."""
    return {
        match["braced"] or match["named"]
        for text in _strings(node)
        for match in INTERPOLATION.finditer(text)
        if not match["escaped"]
    }


def _required_variables(node: object) -> set[str]:
    return {name for text in _strings(node) for name in REQUIRED_VARIABLE.findall(text)}


def _cli_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any pagerbridge setting, so none leaks into a child."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    env.update(overrides)
    return env


def _run_cli(
    args: list[str], *, cwd: Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def _parse_with_cli(args: list[str]) -> None:
    """Parse a command line like `pagerbridge` does, converting option values, without running.

    `--help` exits before values are converted, so `worker --concurrency two --help` succeeds;
    making the command's context does convert them and raises click's usage errors (typer's
    vendored click: `BadParameter`, `NoSuchOption`, ...).
    """
    group = typer.main.get_command(cli)
    root = group.context_class(group, info_name="pagerbridge")
    command = group.get_command(root, args[0])  # type: ignore[attr-defined]
    assert command is not None, f"pagerbridge has no command {args[0]!r}"
    with command.make_context(args[0], list(args[1:]), parent=root):
        pass


# -- docker-compose.yml, parsed ---------------------------------------------------------------


def test_compose_has_the_designed_services() -> None:
    # Given the compose file
    services = _services()

    # Then it holds the README's services (Deployment), the app ones built from this
    # repository's Dockerfile
    assert set(services) == {"redis", "postgres", "tls", *APP_SERVICES}
    # And the TLS-terminating front only on demand (its profile), forwarding to the api
    assert services["tls"]["profiles"] == ["tls"]
    assert "api:8080" in services["tls"]["command"]
    assert "version" not in _compose(), "the Compose spec has no `version:` key"
    assert sorted(name for name, service in services.items() if _built_here(service)) == sorted(
        APP_SERVICES
    )


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_command_is_one_the_cli_accepts(name: str) -> None:
    # Given an app service's command, interpolated as compose would with .env = .env.example
    service = _services()[name]
    assigned, _ = _env_example()
    command = [_interpolate(str(part), assigned) for part in service["command"]]

    # When the real CLI parses it (in a child, like the container's `pagerbridge` would)
    done = _run_cli([*command, "--help"], cwd=ROOT, env=_cli_env())

    # Then it knows the command and every option, and the option values convert
    assert done.returncode == 0, f"`pagerbridge {' '.join(command)}`: {done.stderr or done.stdout}"
    _parse_with_cli(command)


def test_dockerfile_default_command_is_one_the_cli_accepts() -> None:
    # Given the Dockerfile's ENTRYPOINT and CMD (exec form, JSON arrays)
    text = DOCKERFILE.read_text(encoding="utf-8")
    entrypoint = yaml.safe_load(re.search(r"^ENTRYPOINT\s+(\[.*\])$", text, re.M)[1])  # type: ignore[index]
    command = yaml.safe_load(re.search(r"^CMD\s+(\[.*\])$", text, re.M)[1])  # type: ignore[index]

    # Then the entrypoint is the installed console script and the default command parses
    assert entrypoint == ["pagerbridge"]
    assert command == _services()["api"]["command"]
    _parse_with_cli(command)


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    # Given the Dockerfile's COPY sources and .dockerignore's patterns
    text = DOCKERFILE.read_text(encoding="utf-8")
    sources = [
        source
        for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M)
        for source in line.split()[:-1]
        if not source.startswith("--")
    ]
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    }

    # Then each one is in the repository (else the build stops at that COPY) and in the context
    assert sources, "the Dockerfile copies nothing"
    missing = [source for source in sources if not (ROOT / source).exists()]
    assert not missing, f"the Dockerfile copies files the repository lacks: {missing}"
    assert not ignored & {source.rstrip("/") for source in sources}


def test_dependency_conditions() -> None:
    # Given the services
    services = _services()
    healthy = {"condition": "service_healthy"}

    # Then migrate waits for healthy stores, and runs once
    assert services["migrate"]["depends_on"] == {"redis": healthy, "postgres": healthy}
    assert services["migrate"]["restart"] == "no"
    # And api, worker and beat start only after migrate succeeded, and restart themselves
    for name in LONG_RUNNING:
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "redis": healthy,
            "postgres": healthy,
        }, name
        assert services[name]["restart"] == "unless-stopped", name
    # And the stores have the healthchecks those conditions wait for
    for name in ("redis", "postgres"):
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["restart"] == "unless-stopped", name


def test_every_app_service_gets_the_shared_environment() -> None:
    # Given the extension field the app services' environment is anchored to
    compose = _compose()
    shared = compose[SHARED_ENV_KEY]

    # Then each app service has exactly that environment
    for name in APP_SERVICES:
        assert compose["services"][name]["environment"] == shared, name
    # And the stores are the compose services, not localhost
    assert shared["PAGERBRIDGE_REDIS_URL"].startswith("redis://redis:")
    assert "@postgres:5432/" in shared["PAGERBRIDGE_DATABASE_URL"]


def test_secrets_come_only_from_the_environment() -> None:
    # Given every environment entry in the file whose name says it is a secret
    compose = _compose()
    environments = [compose[SHARED_ENV_KEY]] + [
        service.get("environment") or {} for service in compose["services"].values()
    ]
    secrets = {
        key: value
        for environment in environments
        for key, value in environment.items()
        if re.search(r"TOKEN|PASSWORD|SECRET", key)
    }

    # Then each is a required ${VAR:?...} (a secret has no default), or embeds one, or, for an
    # optional one (operator tokens, webhook secrets), has no value in the file at all: compose
    # passes it through from the environment or .env
    assert secrets
    for key, value in secrets.items():
        assert value is None or _required_variables(value), f"{key} must come from the environment"


def test_required_variables_are_set_in_env_example() -> None:
    # Given the variables compose refuses to start without
    required = _required_variables(_compose())
    assigned, _ = _env_example()

    # Then .env.example sets each one, to a value that is plainly a placeholder
    assert required >= {
        "POSTGRES_PASSWORD",
        "PAGERBRIDGE_PAGERDUTY_TOKEN",
        "PAGERBRIDGE_PAGERDUTY_FROM",
        "PAGERBRIDGE_INGRESS_TOKENS",
    }
    assert required <= set(assigned), f"missing from .env.example: {required - set(assigned)}"
    for name in required:
        assert "change-me" in assigned[name], f"{name} in .env.example should be a placeholder"


def test_every_variable_compose_reads_is_documented_in_env_example() -> None:
    # Given every variable the compose file interpolates or passes through
    compose = _compose()
    read = _referenced_variables(compose) | set(compose[SHARED_ENV_KEY])
    _, documented = _env_example()

    # Then .env.example explains each one
    assert read <= documented, f"not in .env.example: {sorted(read - documented)}"


def test_every_setting_is_documented_and_reaches_the_containers() -> None:
    # Given every field of the settings, as the variable that sets it
    variables = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    _, documented = _env_example()
    compose = _compose()
    commands = [compose["services"][name]["command"] for name in APP_SERVICES]
    reaching = set(compose[SHARED_ENV_KEY]) | _referenced_variables(commands)

    # Then .env.example documents each one, and setting it in .env changes the containers
    assert variables <= documented, f"not in .env.example: {sorted(variables - documented)}"
    assert variables <= reaching, f"never passed to the containers: {sorted(variables - reaching)}"


# -- docker compose config ----------------------------------------------------------------


def _compose_client() -> list[str] | None:
    """`docker compose` (the v2 plugin) if it works here, else `docker-compose`, else None."""
    for client in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(client[0]) is None:
            continue
        probe = subprocess.run(
            [*client, "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return client
    return None


@pytest.fixture(scope="module")
def compose_client() -> list[str]:
    client = _compose_client()
    if client is None:
        service_missing(
            "neither `docker compose` nor `docker-compose` works here, so docker-compose.yml "
            "cannot be validated; on Debian: apt-get install -y --no-install-recommends "
            "docker-compose"
        )
        raise AssertionError("unreachable")
    return client


def _compose_config(client: list[str], env_file: Path) -> subprocess.CompletedProcess[str]:
    read = _referenced_variables(_compose())
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in read and not key.startswith((ENV_PREFIX, "POSTGRES_"))
    }
    return subprocess.run(
        [*client, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_config_is_valid_with_env_example(compose_client: list[str]) -> None:
    # Given .env.example as the .env, and no pagerbridge variable in the environment
    # When compose validates the file
    done = _compose_config(compose_client, ENV_EXAMPLE)

    # Then it accepts it
    assert done.returncode == 0, done.stderr


def test_compose_config_refuses_a_missing_secret(compose_client: list[str], tmp_path: Path) -> None:
    # Given a .env without the database password
    env_file = tmp_path / "env"
    env_file.write_text(
        "".join(
            line + "\n"
            for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
            if not line.startswith("POSTGRES_PASSWORD=")
        ),
        encoding="utf-8",
    )

    # When compose validates the file
    done = _compose_config(compose_client, env_file)

    # Then it refuses, naming the variable
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr


# -- the migrate service's command, run natively ------------------------------------------


def test_migrate_command_creates_the_schema(tmp_path: Path) -> None:
    # Given the migrate service's command and a throwaway SQLite database
    command = [str(part) for part in _services()["migrate"]["command"]]
    database = tmp_path / "x.db"
    env = _cli_env(**{f"{ENV_PREFIX}DATABASE_URL": f"sqlite:///{database}"})

    # When it runs twice, as every `docker compose up` runs it again
    for _ in range(2):
        done = _run_cli(command, cwd=tmp_path, env=env)
        # Then it succeeds each time
        assert done.returncode == 0, done.stderr

    # And the tables exist
    with closing(sqlite3.connect(database)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"alerts", "alert_events"} <= tables
