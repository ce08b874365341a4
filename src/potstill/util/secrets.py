"""Secrets from the environment: read by the name of their variable, never logged."""

from __future__ import annotations

import os

from potstill.util.errors import PotstillError


def env_secret(env_name: str | None, *, setting: str, fix: str) -> str | None:
    """The value of environment variable ``env_name`` (None: none is asked for).

    An unset or empty variable is a one-line `PotstillError` that names the variable (never
    a value): ``"{setting}: the environment variable NAME is not set or empty; export
    NAME=<your key>{fix}"``.
    """
    if env_name is None:
        return None
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise PotstillError(
            f"{setting}: the environment variable {env_name} is not set or "
            f"empty; export {env_name}=<your key>{fix}"
        )
    return key
