"""Basic-auth credentials from the environment (Flower's, the operators'): present, well-formed and not weak."""

from __future__ import annotations

# Placeholders of .env.example / k8s/secret.example.yaml and passwords nobody should ship.
WEAK_PASSWORDS = frozenset({"change_me", "changeme", "password", "admin", "flower", "secret", "example"})
MIN_LENGTH = 12


class CredentialsRefused(ValueError):
    """Credentials that are missing or not fit for a deployment."""


FLOWER_HINT = "; only a local run (FLOWER_LOCAL_MODE=1) may use such a password"


def check_basic_auth(value: str | None, local_mode: bool, variable: str = "FLOWER_BASIC_AUTH",
                     hint: str = FLOWER_HINT) -> str:
    """The `user:password` in `value`, or CredentialsRefused saying what is wrong with `variable`."""
    if not value or ":" not in value:
        raise CredentialsRefused(f"{variable} must be set to user:password")
    user, password = value.split(":", 1)
    if not user or not password:
        raise CredentialsRefused(f"{variable} needs both a user and a password (user:password)")
    if not local_mode and (password.lower() in WEAK_PASSWORDS or "change_me" in password.lower()
                           or len(password) < MIN_LENGTH):
        raise CredentialsRefused(
            f"{variable}'s password is the example or too weak (at least {MIN_LENGTH} characters, "
            f"e.g. `openssl rand -hex 12`){hint}")
    return value


MIN_SECRET_LENGTH = 32


def check_secret(value: str | None, variable: str) -> str:
    """A server secret (a key, not a password): set, at least 32 characters, and not an example's placeholder."""
    if not value:
        raise CredentialsRefused(f"{variable} must be set: {MIN_SECRET_LENGTH}+ random characters, "
                                 "e.g. `openssl rand -hex 32`")
    if "change_me" in value.lower() or len(value) < MIN_SECRET_LENGTH:
        raise CredentialsRefused(f"{variable} is the example or too short (at least {MIN_SECRET_LENGTH} characters, "
                                 "e.g. `openssl rand -hex 32`)")
    return value
