"""docker-compose.yml, Dockerfile and Procfile: the declared processes agree with each other and with the code.

No Docker engine runs these tests: the compose file is parsed (with compose's `${VAR:-default}`
interpolation) and checked for the services, healthchecks, start order, replicas, volumes, and
environment names that the runner actually reads. When a compose CLI is installed, its own
`config` validation runs too.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.authoring.registry import Registry
from runner.config import Settings
from runner.services.fleet import default_queues
from runner.worker.process_supervisor import STOP_MARGIN_SECONDS

ROOT = Path(__file__).resolve().parents[2]
RUNNER_SERVICES = ("migrate", "web", "worker", "dashboard")
# Read by the gunicorn settings (api/gunicorn_config.py) rather than by Settings.
GUNICORN_VARIABLES = ("PORT", "WEB_CONCURRENCY")
# Read by libpq (psycopg2) itself: the database password, kept out of DATABASE_URL.
LIBPQ_VARIABLES = ("PGPASSWORD",)
SAMPLE_VALUES = {"RUNNER_API_KEYS": "a-key"}


def interpolate(text: str) -> str:
    """Compose's `${NAME:-default}` with nothing set in the environment, and `$$` as a literal `$`."""
    text = re.sub(r"\$\{[A-Z_][A-Z0-9_]*:-([^}]*)\}", r"\1", text)
    return text.replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(interpolate((ROOT / "docker-compose.yml").read_text()))
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_the_services_and_their_images(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "postgres", *RUNNER_SERVICES}
    assert services["redis"]["image"] == "redis:7"
    assert services["postgres"]["image"] == "postgres:15"
    assert {services[name]["image"] for name in RUNNER_SERVICES} == {"async-task-runner:latest"}
    assert all(services[name]["build"] == "." for name in RUNNER_SERVICES)


def readme_section(title: str) -> str:
    """The text of one `###` section of the README."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"### {title}\n")
    end = text.find("\n#", start + 1)
    return text[start:end if end > 0 else None]


def test_redis_persists_with_an_append_only_file(services: dict[str, Any], compose: dict[str, Any]) -> None:
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command and "--appendfsync always" in command
    # The README's compose section says what the file does (it said "fsync every second").
    section = readme_section("Docker Compose")
    assert "`appendfsync always`" in section and "every second" not in section
    assert "--maxmemory-policy noeviction" in command
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    volume = services["redis"]["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in compose["volumes"]


def test_postgres_persists_and_reports_readiness(services: dict[str, Any], compose: dict[str, Any]) -> None:
    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data" and volume[0] in compose["volumes"]


def test_migrate_runs_once_before_web_workers_and_dashboard(services: dict[str, Any]) -> None:
    assert services["migrate"]["command"] == ["python", "-m", "runner", "migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker", "dashboard"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == depends["postgres"]["condition"] == "service_healthy", name


@pytest.mark.parametrize(("service", "port"), [("web", "8000"), ("dashboard", "9181")])
def test_http_services_publish_their_port_on_loopback_and_check_healthz(
    services: dict[str, Any], service: str, port: str
) -> None:
    definition = services[service]
    assert definition["environment"]["PORT"] == port
    # Without API keys (the default) anyone reaching the port may invoke: this machine only, unless told.
    assert definition["ports"] == [f"127.0.0.1:{port}:{port}"]
    raw = (ROOT / "docker-compose.yml").read_text()
    assert f'"${{PUBLISH_ADDRESS:-127.0.0.1}}:{port}:{port}"' in raw
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(definition["healthcheck"]["test"])


def seconds(duration: str) -> float:
    """A compose duration such as `11m`, `90s` or `1m30s`, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(amount) * units[unit] for amount, unit in re.findall(r"(\d+(?:\.\d+)?)([hms])", duration))


def test_two_workers_that_may_finish_their_jobs_on_shutdown(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert "ports" not in worker and "container_name" not in worker  # replicas must not collide
    # SIGTERM lets the current job run RUNNER_WORKER_GRACE_SECONDS: at least the longest timeout...
    grace = Settings.from_env({"RUNNER_WORKER_GRACE_SECONDS": worker["environment"]["RUNNER_WORKER_GRACE_SECONDS"]})
    assert grace.worker_grace_seconds >= max(spec.timeout for spec in Registry.discover("functions"))
    # ... and Docker waits for that, the worker's own margin to kill a stuck job, and its exit.
    assert grace.worker_grace_seconds + STOP_MARGIN_SECONDS + 30 <= seconds(worker["stop_grace_period"])


def test_web_and_workers_share_the_files_volume(services: dict[str, Any], compose: dict[str, Any]) -> None:
    for name in RUNNER_SERVICES:
        service = services[name]
        mounts = dict(volume.split(":")[:2][::-1] for volume in service["volumes"])
        assert mounts["/data"] in compose["volumes"], name
        environment = service["environment"]
        assert environment["RUNNER_UPLOAD_DIR"].startswith("/data/"), name
        assert environment["RUNNER_ARTIFACT_DIR"].startswith("/data/"), name
        assert environment["REDIS_URL"] == "redis://redis:6379/0"


@pytest.mark.parametrize("service", RUNNER_SERVICES)
def test_the_database_url_names_the_postgres_service_and_the_password_goes_apart(
    services: dict[str, Any], service: str
) -> None:
    database = services["postgres"]["environment"]
    environment = {name: str(value or "") for name, value in services[service]["environment"].items()}
    url = Settings.from_env(environment).effective_database_url
    # A password in the URL would need escaping ('p@ss/word' broke it): libpq reads PGPASSWORD instead.
    assert url == f"postgresql://{database['POSTGRES_USER']}@postgres:5432/{database['POSTGRES_DB']}"
    assert environment["PGPASSWORD"] == database["POSTGRES_PASSWORD"]
    raw = (ROOT / "docker-compose.yml").read_text()
    assert "PGPASSWORD: ${POSTGRES_PASSWORD:-runner}" in raw and "${POSTGRES_PASSWORD" not in raw.split(
        "DATABASE_URL:")[1].splitlines()[0]


@pytest.mark.parametrize("service", RUNNER_SERVICES)
def test_every_variable_set_is_one_the_runner_reads(services: dict[str, Any], service: str) -> None:
    gunicorn_conf = (ROOT / "api" / "gunicorn_config.py").read_text()
    for name, raw in services[service]["environment"].items():
        if name in GUNICORN_VARIABLES:
            assert re.search(rf"environ\.get\(['\"]{name}['\"]", gunicorn_conf), name
            continue
        if name in LIBPQ_VARIABLES:
            continue
        value = SAMPLE_VALUES.get(name) or str(raw or "") or "x"
        assert Settings.from_env({name: value}) != Settings(), f"{name} is not read by runner.config.Settings"


def test_compose_commands_are_the_procfile_commands(services: dict[str, Any]) -> None:
    processes = procfile()
    assert services["worker"]["command"] == shlex.split(processes["worker"])
    assert services["dashboard"]["command"] == shlex.split(processes["dashboard"])
    assert services["migrate"]["command"] == shlex.split(processes["release"])
    assert processes["web"].endswith(shlex.join(services["web"]["command"]).replace("'", '"'))


def test_the_procfile_declares_every_process_type() -> None:
    processes = procfile()
    assert list(processes) == ["release", "web", "worker", "worker_ai", "worker_demo", "dashboard"]
    assert processes["release"] == "python -m runner migrate"
    assert processes["worker"] == "python -m runner worker"


def test_the_specialised_worker_types_cover_every_queue_exactly_once() -> None:
    # Scaling only worker_ai and worker_demo must leave no queue without a worker.
    processes = procfile()
    served = [shlex.split(processes[name])[4:] for name in ("worker_ai", "worker_demo")]
    assert served[0] == ["ai_processing"]
    flat = [queue for queues in served for queue in queues]
    assert sorted(flat) == sorted(default_queues(Registry.discover("functions")))


def test_the_image_installs_the_requirements_and_runs_gunicorn() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.MULTILINE)
    assert "pip install -r requirements.txt" in dockerfile
    assert re.search(r"^USER (?!root)", dockerfile, re.MULTILINE)
    # Migrate, then gunicorn, as the Procfile's web line: a database without the tables would only answer 503.
    command = json.loads(dockerfile.rstrip().splitlines()[-1].removeprefix("CMD "))
    assert command[:2] == ["sh", "-c"]
    assert command[2].replace("exec ", "").replace("'", '"') == procfile()["web"]
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".runner", "tests"} <= ignored


def test_a_compose_cli_accepts_the_file() -> None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode != 0:
            continue
        result = subprocess.run([*command, "--profile", "dashboard", "config", "--quiet"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return
    pytest.skip("no compose CLI (docker compose or docker-compose) is installed")
