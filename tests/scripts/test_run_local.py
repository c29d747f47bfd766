"""`make run` itself (scripts/run_local.py): which model it serves, and the secrets it keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import run_local
from shared.config import Settings
from shared.credentials import check_secret


def test_make_run_serves_the_strong_model_once_trained_unless_model_path_says_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    strong = tmp_path / "mnist_model_strong.h5"
    monkeypatch.setattr(run_local, "STRONG_MODEL_PATH", strong)
    monkeypatch.delenv("MODEL_PATH", raising=False)
    default = Settings(redis_url="redis://x", database_url="sqlite://")  # type: ignore[call-arg]
    assert run_local.served_model(default) == default.model_path  # not trained: the seed model
    strong.write_bytes(b"weights")
    assert run_local.served_model(default) == strong
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "mine.h5"))
    chosen = Settings(redis_url="redis://x", database_url="sqlite://")  # type: ignore[call-arg]
    assert run_local.served_model(chosen) == tmp_path / "mine.h5"


def test_make_run_keeps_its_secrets_in_the_data_folder(tmp_path: Path) -> None:
    webhook = run_local.kept_secret(tmp_path, run_local.WEBHOOK_SECRET)
    owner = run_local.kept_secret(tmp_path, run_local.OWNER_SECRET)
    assert webhook.startswith("whsec_") and len(owner) == 64 and int(owner, 16) >= 0
    assert check_secret(owner, "OWNER_TOKEN_SECRET") == owner
    for name in (run_local.WEBHOOK_SECRET, run_local.OWNER_SECRET):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    # A restart reads the same ones: receivers keep verifying, visitors keep their history.
    assert run_local.kept_secret(tmp_path, run_local.WEBHOOK_SECRET) == webhook
    assert run_local.kept_secret(tmp_path, run_local.OWNER_SECRET) == owner
