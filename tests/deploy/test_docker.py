"""Offline checks of the Docker build and compose files: linters, the compose schema, and the contract.

No Docker engine is needed. hadolint and check-jsonschema come from requirements/dev.txt (`make test` installs it);
a missing tool fails the test rather than skipping it. The real run is scripts/compose-smoke.sh.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts import processes
from shared.config import REPO_ROOT, FlowerSettings, Settings

DOCKERFILES = sorted((REPO_ROOT / "docker").glob("*.Dockerfile"))
WEB_DOCKERFILE = REPO_ROOT / "docker" / "web.Dockerfile"
WORKER_DOCKERFILE = REPO_ROOT / "docker" / "worker.Dockerfile"
COMPOSE = REPO_ROOT / "docker-compose.yml"
COMPOSE_SMOKE = REPO_ROOT / "docker-compose.smoke.yml"
COMPOSE_SMOKE_SCRIPT = REPO_ROOT / "scripts" / "compose-smoke.sh"
MAKE_STANDINS = REPO_ROOT / "scripts" / "make-standins.sh"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
CONFIGURATION_DOC = REPO_ROOT / "docs" / "configuration.md"
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus.yml"
K8S_REDIS = REPO_ROOT / "k8s" / "base" / "redis.yaml"
# Variables that carry secrets: compose must take them from .env and refuse to start without them.
SECRET_VARS = ("MYSQL_PASSWORD", "MYSQL_ROOT_PASSWORD", "FLOWER_BASIC_AUTH", "OWNER_TOKEN_SECRET")
LONG_RUNNING = ("mysql", "redis", "web", "worker", "flower")


def tool(name: str) -> str:
    """The venv's copy of a command-line tool first, then PATH; fail (never skip) when it is missing."""
    dirs = os.pathsep.join(map(str, [Path(sys.executable).parent, REPO_ROOT / ".venv" / "bin"]))
    found = shutil.which(name, path=dirs) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make test` (it installs requirements/dev.txt)", pytrace=False)
    return found


def _yaml() -> Any:
    try:
        from ruamel.yaml import YAML  # installed with check-jsonschema (requirements/dev.txt)
    except ImportError:
        pytest.fail("ruamel.yaml is not installed: run `make test` (it installs requirements/dev.txt)", pytrace=False)
    return YAML(typ="safe", pure=True)


def load_yaml(path: Path) -> Any:
    return _yaml().load(path.read_text())


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in _yaml().load_all(path.read_text()) if doc]


def option(args: list[str], name: str) -> str:
    """The value after `name` in an argument list (`--flag value`)."""
    return str(args[args.index(name) + 1])


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), " ".join(rest.split())))
    return pairs


def requirement_closure(path: Path) -> list[Path]:
    """A requirements file and every file it pulls in with -r, recursively."""
    seen: list[Path] = []
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        for line in current.read_text().splitlines():
            match = re.match(r"\s*-r\s+(\S+)", line)
            if match:
                todo.append(current.parent / match.group(1))
    return seen


def copied_requirements(dockerfile: Path) -> list[Path]:
    files = []
    for word, args in instructions(dockerfile):
        if word == "COPY":
            files += [REPO_ROOT / arg for arg in args.split()[:-1] if arg.startswith("requirements/")]
    return files


# --- linters -----------------------------------------------------------------------------------------------------

def test_dockerfiles_exist() -> None:
    assert WEB_DOCKERFILE in DOCKERFILES and WORKER_DOCKERFILE in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    result = subprocess.run([tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_files_match_the_compose_spec() -> None:
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE), str(COMPOSE_SMOKE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Dockerfiles ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", [WEB_DOCKERFILE, WORKER_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_contract(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    words = [word for word, _ in steps]
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    assert ("FROM", "${BASE_IMAGE}") in steps
    assert ("WORKDIR", "/app") in steps
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    assert "PATH=/opt/venv/bin:$PATH" in env, "a venv works on both the official and the Debian base"
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "--uid 10001" in runs
    # The last USER is numeric and not root (Kubernetes' runAsNonRoot can only verify a numeric user).
    user = [args for word, args in steps if word == "USER"][-1]
    assert user.split(":")[0] == "10001"
    for word, args in steps:
        if word == "RUN" and "pip install" in args:
            assert "--no-cache-dir" in args
    assert words[-1] == "CMD" and steps[-1][1].startswith("[")
    # Requirements are installed before any code is copied: a code change never reinstalls the dependencies.
    pip_step = next(i for i, (word, args) in enumerate(steps) if word == "RUN" and "pip install" in args)
    code_steps = [i for i, (word, args) in enumerate(steps) if word == "COPY" and "requirements/" not in args]
    assert code_steps and min(code_steps) > pip_step


def test_worker_image_installs_no_tensorflow() -> None:
    """CPU workers run the ONNX form: TensorFlow is the trainer's (and the GPU image's), not theirs."""
    for req in requirement_closure(REPO_ROOT / "requirements" / "worker.txt"):
        for line in req.read_text().splitlines():
            assert not re.match(r"\s*(tensorflow|keras|h5py)\b", line, re.I), f"{req.name} pulls in {line!r}"


def test_web_image_installs_no_tensorflow() -> None:
    copied = copied_requirements(WEB_DOCKERFILE)
    assert [p.relative_to(REPO_ROOT).as_posix() for p in copied] == ["requirements/locks/web.txt"]
    text = WEB_DOCKERFILE.read_text()
    assert "--require-hashes -r requirements/locks/web.txt" in text
    for req in [r for p in copied for r in requirement_closure(p)]:
        for line in req.read_text().splitlines():
            assert not re.match(r"\s*(tensorflow|keras)\b", line, re.I), f"{req.name} pulls in {line!r}"


def test_web_image_serves_port_80_and_flower_and_migrations() -> None:
    steps = instructions(WEB_DOCKERFILE)
    assert ("EXPOSE", "80") in steps
    # The command `make run` and the tests start, from scripts/processes.py (written once).
    assert json.loads(steps[-1][1]) == processes.web("0.0.0.0:80", 2, extra=["--access-logfile", "-"])
    copied = " ".join(args for word, args in steps if word == "COPY")
    for needed in ("alembic.ini", "migrations/", "templates/", "shared/", "web/", "worker/"):
        assert needed in copied


def test_worker_image_requirements_are_a_build_arg() -> None:
    steps = instructions(WORKER_DOCKERFILE)
    assert ("ARG", "REQUIREMENTS=requirements/locks/worker.txt") in steps
    assert any(word == "RUN" and '--require-hashes -r "${REQUIREMENTS}"' in args for word, args in steps)
    assert {p.relative_to(REPO_ROOT).as_posix() for p in copied_requirements(WORKER_DOCKERFILE)} == {
        "requirements/locks/worker.txt", "requirements/locks/training.txt", "requirements/locks/gpu.txt"}
    assert json.loads(steps[-1][1]) == processes.worker()
    copied = " ".join(args for word, args in steps if word == "COPY")
    for needed in ("shared/", "worker/", "training/"):  # training/: the trainer job runs from this image
        assert needed in copied


def test_dockerignore_keeps_secrets_and_bulk_out() -> None:
    rules = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "an allow-list: everything is excluded unless named"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert not allowed & {".env", ".venv", ".git", "models", "var", "tests", "."}
    # ...and everything a Dockerfile copies from the build context is let through (a file left out fails the build).
    for dockerfile in DOCKERFILES:
        for word, args in instructions(dockerfile):
            if word == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert source.rstrip("/").split("/")[0] in allowed, f"{dockerfile.name} copies {source}"


# --- docker-compose.yml --------------------------------------------------------------------------------------------

def test_services(services: dict[str, Any]) -> None:
    assert set(services) == {"mysql", "redis", "trainer", "migrate", "web", "worker", "worker-gpu", "flower",
                             "prometheus"}
    # One service builds each image; the others run it by name (built once per `up --build`).
    assert services["web"]["build"]["dockerfile"] == "docker/web.Dockerfile"
    assert services["worker"]["build"]["dockerfile"] == "docker/worker.Dockerfile"
    assert services["worker"]["build"]["args"]["REQUIREMENTS"] == "requirements/locks/worker.txt"
    for name in ("web", "migrate", "flower"):
        assert services[name]["image"] == "digits-web:latest"
    assert services["worker"]["image"] == "digits-worker:latest"
    # The trainer's image has TensorFlow and the ONNX exporter; the worker's has neither.
    assert services["trainer"]["image"] == "digits-trainer:latest"
    assert services["trainer"]["build"]["args"]["REQUIREMENTS"] == "requirements/locks/training.txt"
    for name in ("migrate", "flower"):
        assert "build" not in services[name]
    for name in ("web", "worker", "worker-gpu"):
        assert services[name]["build"]["args"]["BASE_IMAGE"] == "${BASE_IMAGE:-python:3.11-slim-bookworm}"


def test_worker_scales(services: dict[str, Any]) -> None:
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        assert "container_name" not in worker and "ports" not in worker, f"{name} must scale with --scale"
        grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
        assert grace and int(grace.group(1)) >= 30, "long enough for Celery's warm shutdown"
        assert worker["volumes"] == ["models:/app/models:ro"]


def test_start_order_without_sleeps(compose: dict[str, Any], services: dict[str, Any]) -> None:
    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert conditions("migrate") == {"mysql": "service_healthy"}
    assert conditions("web") == {"migrate": "service_completed_successfully", "redis": "service_healthy",
                                 "mysql": "service_healthy"}
    for name in ("worker", "worker-gpu"):
        assert conditions(name) == {"trainer": "service_completed_successfully",
                                    "migrate": "service_completed_successfully",
                                    "redis": "service_healthy", "mysql": "service_healthy"}
    assert conditions("flower") == {"redis": "service_healthy"}
    for name in LONG_RUNNING:
        assert services[name]["healthcheck"]["test"], f"{name} needs a healthcheck"
    for name in ("trainer", "migrate"):
        assert services[name]["restart"] == "no"
    assert not re.search(r"\bsleep\s+\d", COMPOSE.read_text()), "order by conditions, not by sleeping"


def test_web_and_flower(services: dict[str, Any]) -> None:
    web = services["web"]
    # WEB_BIND unset: no host address, i.e. every one, IPv4 and IPv6 (as before the setting); 127.0.0.1: loopback.
    assert web["ports"] == ["${WEB_BIND:-}:${WEB_PORT:-80}:80"]
    assert "/readyz" in " ".join(web["healthcheck"]["test"])
    assert web["environment"]["OWNER_TOKEN_SECRET"].startswith("${OWNER_TOKEN_SECRET:?")  # the web refuses without
    flower = services["flower"]
    assert flower["command"] == processes.flower(5555)  # refuses weak passwords
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert flower["ports"] == ["${FLOWER_BIND:-127.0.0.1}:${FLOWER_PORT:-5555}:5555"], "loopback by default"


def test_flower_gets_only_what_it_needs(services: dict[str, Any]) -> None:
    flower = services["flower"]
    env = flower["environment"]
    # The broker and the credentials: no database URL, no MySQL password, nothing Flower does not read.
    assert set(env) == {"REDIS_URL", "FLOWER_BASIC_AUTH"}, set(env)
    assert {key.upper() for key in env} <= {name.upper() for name in FlowerSettings.model_fields}
    assert env["REDIS_URL"] == services["web"]["environment"]["REDIS_URL"]
    assert not [key for key in env if "DATABASE" in key or "MYSQL" in key]
    assert "MYSQL_PASSWORD" not in str(env) and "DATABASE_URL" not in str(env)
    # No credential in the command (`ps` shows it): Flower reads FLOWER_BASIC_AUTH from its environment.
    command = " ".join(flower["command"])
    assert not re.search(r"auth|FLOWER_BASIC|PASSWORD|\$", command, re.I), command
    assert "entrypoint" not in flower


def test_trainer_and_migrate(services: dict[str, Any]) -> None:
    trainer = services["trainer"]
    command = " ".join(trainer["command"])
    assert "python -m worker.create_and_train_model --output /app/models/mnist_model.h5" in command
    assert '--data "$$TRAIN_DATA"' in command and trainer["environment"]["TRAIN_DATA"] == "${MNIST_DIR:+/data/mnist}"
    assert "models:/app/models" in trainer["volumes"]
    assert services["migrate"]["command"] == ["python", "-m", "shared.migrate"]


def test_stateful_services(compose: dict[str, Any], services: dict[str, Any]) -> None:
    # The official images unless MYSQL_IMAGE / REDIS_IMAGE say otherwise (scripts/make-standins.sh's stand-ins).
    assert services["mysql"]["image"] == "${MYSQL_IMAGE:-mariadb:11.4}"
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7.4-bookworm}"
    assert services["mysql"]["healthcheck"]["test"][:2] == ["CMD", "healthcheck.sh"], "the stand-in provides it"
    assert services["mysql"]["volumes"] == ["mysql-data:/var/lib/mysql"]
    env = services["mysql"]["environment"]
    assert env["MARIADB_DATABASE"] == "digits" and env["MARIADB_USER"] == "digits"
    redis = services["redis"]
    assert redis["volumes"] == ["redis-data:/data"]
    assert option(redis["command"], "--appendonly") == "yes"
    assert {"mysql-data", "redis-data", "models"} <= set(compose["volumes"])


def test_redis_memory_is_capped_as_in_kubernetes(services: dict[str, Any]) -> None:
    """When full, Redis evicts only keys with a TTL (status documents), never the queue (no TTL)."""
    command = services["redis"]["command"]
    assert option(command, "--maxmemory-policy") == "volatile-ttl"
    assert re.fullmatch(r"\d+(mb|gb)", option(command, "--maxmemory")), option(command, "--maxmemory")
    (k8s_redis,) = [doc for doc in load_yaml_documents(K8S_REDIS) if doc["kind"] == "Deployment"]
    (container,) = k8s_redis["spec"]["template"]["spec"]["containers"]
    for name in ("--maxmemory", "--maxmemory-policy"):
        assert option(command, name) == option(container["args"], name), f"{name} differs from {K8S_REDIS.name}"


def test_gpu_profile(services: dict[str, Any]) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["image"] == "digits-worker:gpu"
    assert gpu["build"]["args"]["REQUIREMENTS"] == "requirements/locks/gpu.txt"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_app_environment_matches_settings(services: dict[str, Any]) -> None:
    known = {name.upper() for name in Settings.model_fields}
    # Flower has its own settings (FlowerSettings): test_flower_gets_only_what_it_needs.
    for name in ("web", "worker", "migrate"):
        env = services[name]["environment"]
        app_vars = set(env)
        assert app_vars <= known, f"{name}: {app_vars - known} are not read by shared/config.py"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["DATABASE_URL"] == "mysql+pymysql://digits:${MYSQL_PASSWORD:?set MYSQL_PASSWORD in .env}" \
                                      "@mysql:3306/digits"
        assert env["MODEL_PATH"] == "/app/models/mnist_model.h5"


def test_no_secrets_in_compose_files() -> None:
    for path in (COMPOSE, COMPOSE_SMOKE):
        text = path.read_text()
        for var in SECRET_VARS:
            # Every use of a secret is a required interpolation: compose refuses to start without it.
            for use in re.findall(r"\$\{" + var + r"([^}]*)\}", text):
                assert use.startswith(":?"), f"{path.name}: ${{{var}{use}}} must be ${{{var}:?...}}"
        for match in re.finditer(r"(?im)^\s*-?\s*([A-Z_]*(PASSWORD|SECRET|TOKEN|AUTH)[A-Z_]*)\s*[:=]\s*(\S+)", text):
            assert match.group(3).startswith("${"), f"{path.name}: {match.group(1)} has a literal value"
        assert not re.search(r"://[^:/\s]+:(?!\$\{)[^@\s]+@", text), f"{path.name}: a URL with a literal password"


def test_env_example_has_placeholders_only() -> None:
    values = dict(line.split("=", 1) for line in (REPO_ROOT / ".env.example").read_text().splitlines()
                  if "=" in line and not line.lstrip().startswith("#"))
    for var in SECRET_VARS:
        assert var in values, f".env.example lacks {var}"
        assert values[var] in ("", "CHANGE_ME") or ":CHANGE_ME" in values[var], f".env.example: {var} is set"


def compose_variables() -> set[str]:
    """The variables docker-compose.yml interpolates (not `$${...}`, which the container's shell expands)."""
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))


def test_every_compose_variable_is_documented() -> None:
    names = compose_variables()
    assert {"WEB_BIND", "MYSQL_IMAGE", "REDIS_IMAGE", "MNIST_DIR", "BASE_IMAGE"} <= names
    example = ENV_EXAMPLE.read_text()
    doc = CONFIGURATION_DOC.read_text()
    for name in sorted(names):
        assert re.search(rf"(?m)^(# )?{name}=", example), f".env.example does not name {name}"
        assert f"`{name}`" in doc, f"docs/configuration.md does not name {name}"
    # The offline values are next to their variables, commented out: the online defaults stay in force.
    for line in ("# MNIST_DIR=../shared/data/mnist", "# WEB_BIND=", "# MYSQL_IMAGE=mariadb:11.4",
                 "# REDIS_IMAGE=redis:7.4-bookworm"):
        assert re.search(rf"(?m)^{re.escape(line)}$", example), f".env.example lacks the line {line!r}"


# --- without an image registry: scripts/make-standins.sh -----------------------------------------------------------

def test_make_standins_is_a_runnable_script() -> None:
    assert os.access(MAKE_STANDINS, os.X_OK), "scripts/make-standins.sh must be executable"
    for script in (MAKE_STANDINS, COMPOSE_SMOKE_SCRIPT):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


def test_make_standins_prints_what_compose_reads() -> None:
    """`scripts/make-standins.sh >> .env` must set exactly the image variables docker-compose.yml reads."""
    text = MAKE_STANDINS.read_text()
    (printf,) = re.findall(r"^printf '([^']*)'", text, re.M)
    printed = re.findall(r"([A-Z_]+)=%s", printf)
    assert printed == ["BASE_IMAGE", "MYSQL_IMAGE", "REDIS_IMAGE"]
    assert set(printed) <= compose_variables()
    # Reuses what exists; the base comes from scripts/make-base-image.sh, whose output must not reach .env.
    assert "docker image inspect" in text
    assert re.search(r"scripts/make-base-image\.sh >&2", text), "make-base-image.sh's stdout would land in .env"
    # The stand-ins cover what docker-compose.yml asks of the official images.
    for needed in ("MARIADB_DATABASE", "MARIADB_USER", "MARIADB_PASSWORD", "MARIADB_ROOT_PASSWORD",
                   "healthcheck.sh", "/var/lib/mysql", "redis-server", "redis-tools", "/data"):
        assert needed in text, f"the stand-ins lack {needed}"


def test_compose_smoke_uses_make_standins() -> None:
    smoke = COMPOSE_SMOKE_SCRIPT.read_text()
    assert "scripts/make-standins.sh" in smoke
    # ... and takes exactly the lines it prints (test_make_standins_prints_what_compose_reads).
    assert "BASE_IMAGE | MYSQL_IMAGE | REDIS_IMAGE) export" in smoke
    assert "FROM $BASE_IMAGE" not in smoke, "the stand-ins' recipe lives in scripts/make-standins.sh only"
    assert "SMOKE_MYSQL_IMAGE" not in smoke and "SMOKE_REDIS_IMAGE" not in smoke
    # The override no longer names the images: docker-compose.yml's MYSQL_IMAGE / REDIS_IMAGE do, for users too.
    override = load_yaml(COMPOSE_SMOKE)["services"]
    assert not [name for name, service in override.items() if "image" in service]


# --- Prometheus: docker-compose.yml's `monitoring` profile and deploy/prometheus.yml ---------------------------------

# Scraped with many replicas (--scale): found by DNS, never named as one static target.
SCALED = ("worker", "worker-gpu")
# The keys deploy/prometheus.yml may use: a misspelt one fails here, as it would fail Prometheus' start. Add a key
# after checking it in Prometheus' configuration reference (`promtool check config deploy/prometheus.yml`).
PROMETHEUS_KEYS = {
    "": {"global", "scrape_configs"},
    "global": {"scrape_interval", "scrape_timeout", "evaluation_interval", "external_labels"},
    "scrape_configs": {"job_name", "metrics_path", "scheme", "scrape_interval", "scrape_timeout", "static_configs",
                       "dns_sd_configs", "relabel_configs", "metric_relabel_configs"},
    "static_configs": {"targets", "labels"},
    "dns_sd_configs": {"names", "type", "port", "refresh_interval"},
}


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return load_yaml(PROMETHEUS_CONFIG)


def network_names(services: dict[str, Any]) -> dict[str, list[str]]:
    """A name on the compose network -> the services that answer to it (their own names and network aliases)."""
    names: dict[str, list[str]] = {name: [name] for name in services}
    for name, service in services.items():
        networks = service.get("networks") or {}
        for network in networks.values() if isinstance(networks, dict) else []:
            for alias in (network or {}).get("aliases", []):
                names.setdefault(alias, []).append(name)
    return names


def container_ports(service: dict[str, Any]) -> set[int]:
    """The ports a service's container opens to the compose network: `expose`, and the container side of `ports`."""
    ports = {int(str(port)) for port in service.get("expose", [])}
    ports |= {int(str(mapping).rsplit(":", 1)[-1].split("/")[0]) for mapping in service.get("ports", [])}
    return ports


def metrics_port(service: dict[str, Any]) -> int | None:
    """Where the service's own process serves Prometheus metrics, from what configures that process; None: nowhere."""
    image, command = service.get("image", ""), service.get("command")
    if image.startswith("digits-worker") and command is None:  # the image's CMD: a Celery worker
        default = Settings.model_fields["worker_metrics_port"].default
        return int((service.get("environment") or {}).get("WORKER_METRICS_PORT", default))
    if image.startswith("digits-web") and command is None:  # the image's CMD: gunicorn
        bind = re.search(r'"--bind", "0\.0\.0\.0:(\d+)"', WEB_DOCKERFILE.read_text())
        return int(bind.group(1)) if bind else None
    if image.startswith("digits-web") and command[:3] == ["python", "-m", "worker.flower"]:
        ports = [int(arg.split("=", 1)[1]) for arg in command if arg.startswith("--port=")]
        return ports[-1] if ports else 5555
    if image.startswith("prom/prometheus"):
        return 9090
    return None


def scrape_targets(config: dict[str, Any]) -> list[tuple[str, str, int, bool]]:
    """(job, host, port, by DNS) for every target of every job."""
    found = []
    for job in config.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = str(target).rpartition(":")
                found.append((job["job_name"], host, int(port), False))
        for dns in job.get("dns_sd_configs", []):
            found += [(job["job_name"], name, int(dns["port"]), True) for name in dns["names"]]
    return found


def scrape_problems(config: dict[str, Any], services: dict[str, Any]) -> list[str]:
    """What is wrong with the scrape configuration against docker-compose.yml; empty when nothing is."""
    sections: list[tuple[str, dict[str, Any]]] = [("", config), ("global", config.get("global", {}))]
    for job in config.get("scrape_configs", []):
        sections.append(("scrape_configs", job))
        sections += [(kind, item) for kind in ("static_configs", "dns_sd_configs") for item in job.get(kind, [])]
    problems = [f"unknown key {where}.{key}" for where, section in sections
                for key in sorted(set(section) - PROMETHEUS_KEYS[where])]
    jobs = [job["job_name"] for job in config.get("scrape_configs", [])]
    if len(set(jobs)) != len(jobs):
        problems.append(f"job names repeat: {jobs}")
    for job in config.get("scrape_configs", []):
        if job.get("metrics_path", "/metrics") != "/metrics":
            problems.append(f"{job['job_name']}: metrics_path {job['metrics_path']!r}")
        for dns in job.get("dns_sd_configs", []):
            if dns.get("type") != "A":
                problems.append(f"{job['job_name']}: dns_sd_configs type {dns.get('type')!r}, not A (compose's DNS)")
    names = network_names(services)
    covered = set()
    for job, host, port, by_dns in scrape_targets(config):
        # Prometheus' own job: the container itself.
        targets = ["prometheus"] if host == "localhost" else names.get(host, [])
        if not targets:
            problems.append(f"{job}: {host} is no service (nor network alias) of docker-compose.yml")
        for name in targets:
            covered.add(name)
            service = services[name]
            if metrics_port(service) != port:
                problems.append(f"{job}: {name} serves its metrics on {metrics_port(service)}, not {port}")
            if port not in container_ports(service):
                problems.append(f"{job}: {name} does not expose {port} (expose: or ports:)")
            if name in SCALED and not by_dns:
                problems.append(f"{job}: {name} scales; a static target reaches one replica, use dns_sd_configs")
    serving = {name for name, service in services.items() if metrics_port(service) is not None
               and service.get("restart") != "no"}
    if serving - covered:
        problems.append(f"services whose metrics no job scrapes: {sorted(serving - covered)}")
    return problems


def test_prometheus_scrapes_every_service_that_serves_metrics(prometheus: dict[str, Any],
                                                              services: dict[str, Any]) -> None:
    assert not scrape_problems(prometheus, services)
    by_job = {job: (host, port) for job, host, port, _ in scrape_targets(prometheus)}
    assert by_job == {"web": ("web", 80), "worker": ("worker", 9808), "flower": ("flower", 5555),
                      "prometheus": ("localhost", 9090)}


def test_the_scrape_check_catches_wrong_targets(prometheus: dict[str, Any], services: dict[str, Any]) -> None:
    def broken(job_name: str, change) -> list[str]:
        config = copy.deepcopy(prometheus)
        (job,) = [job for job in config["scrape_configs"] if job["job_name"] == job_name]
        change(job)
        return scrape_problems(config, services)

    assert broken("worker", lambda job: job["dns_sd_configs"][0].update(port=9809))
    assert broken("worker", lambda job: job.update(static_configs=[{"targets": ["worker:9808"]}],
                                                   dns_sd_configs=[]))
    assert broken("web", lambda job: job["static_configs"][0].update(targets=["webb:80"]))
    assert broken("web", lambda job: job["static_configs"][0].update(targets=["web:8000"]))
    assert broken("flower", lambda job: job.update(metric_path="/metrics"))
    assert broken("flower", lambda job: job.update(static_configs=[]))  # Flower no longer scraped
    # A worker that stops serving on the scraped port.
    moved = copy.deepcopy(services)
    moved["worker"]["environment"]["WORKER_METRICS_PORT"] = "9900"
    assert scrape_problems(prometheus, moved)


def test_every_worker_serves_metrics_to_the_compose_network(services: dict[str, Any]) -> None:
    names = network_names(services)
    for name in SCALED:
        worker = services[name]
        port = metrics_port(worker)
        assert port and port > 0, f"{name}: WORKER_METRICS_PORT=0 turns its metrics off"
        assert worker["expose"] == [str(port)] and "ports" not in worker, "to the network, not the host"
        assert name in names["worker"], f"{name} must answer to `worker`, the name Prometheus resolves"


def test_prometheus_service_is_optional_pinned_and_reads_the_config(services: dict[str, Any]) -> None:
    service = services["prometheus"]
    assert service["profiles"] == ["monitoring"], "only with `docker compose --profile monitoring up`"
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", service["image"]), "a pinned version"
    config_flag = [arg for arg in service["command"] if arg.startswith("--config.file=")]
    assert config_flag, "the command names the configuration file"
    mount = f"./{PROMETHEUS_CONFIG.relative_to(REPO_ROOT)}:{config_flag[0].split('=', 1)[1]}:ro"
    assert mount in service["volumes"]
    assert "prometheus-data:/prometheus" in service["volumes"]
    assert service["ports"] == ["${PROMETHEUS_BIND:-127.0.0.1}:${PROMETHEUS_PORT:-9090}:9090"], "loopback by default"
    # No credentials: Flower's /metrics needs none (tests/deploy/test_flower_metrics.py).
    assert "environment" not in service


def test_prometheus_config_holds_no_credentials(prometheus: dict[str, Any]) -> None:
    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for value in node.values() for k in keys(value)}
        return {k for value in node for k in keys(value)} if isinstance(node, list) else set()

    assert not keys(prometheus) & {"basic_auth", "authorization", "oauth2", "bearer_token", "password"}
