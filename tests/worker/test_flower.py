"""Flower starts only behind real credentials."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.config import REPO_ROOT, child_environment
from worker.flower import CredentialsRefused, check_basic_auth


@pytest.mark.parametrize("value", [None, "", "admin", "admin:", ":secretsecret123"])
def test_missing_or_malformed_credentials_are_refused_even_locally(value):
    with pytest.raises(CredentialsRefused):
        check_basic_auth(value, local_mode=True)


@pytest.mark.parametrize("password", ["CHANGE_ME", "CHANGE_ME_flower_password", "admin", "short"])
def test_the_example_or_a_weak_password_is_refused_outside_local_mode(password):
    with pytest.raises(CredentialsRefused, match="example or too weak"):
        check_basic_auth(f"admin:{password}", local_mode=False)
    assert check_basic_auth(f"admin:{password}", local_mode=True) == f"admin:{password}"


def test_a_strong_password_is_accepted():
    assert check_basic_auth("ops:4f0c9e2b7a1d55e3", local_mode=False) == "ops:4f0c9e2b7a1d55e3"


def test_the_command_exits_with_a_message_instead_of_starting_flower():
    env = child_environment(FLOWER_BASIC_AUTH="admin:CHANGE_ME", FLOWER_LOCAL_MODE="0")
    out = subprocess.run([sys.executable, "-m", "worker.flower", "--port=1"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Flower not started" in out.stderr and "example or too weak" in out.stderr
