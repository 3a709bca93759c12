"""Exceptions with one-line, user-facing messages."""

from __future__ import annotations


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, "..." marking the cut: a value quoted in an error stays one short line."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ConfigError(ValueError):
    """An impossible or unknown setting: names the field, the value and what is allowed."""


class DataError(RuntimeError):
    """A dataset is missing, truncated, corrupt or not the expected format."""


class PayloadError(ValueError):
    """A wire payload is malformed, truncated, oversized, wrong-shape or non-finite."""


class RunStopped(RuntimeError):
    """A run that was started with valid settings cannot go on (every update of a round rejected, so the
    model cannot move; a spill file changed under it): the CLI prints the one line and exits 1."""


class Damaged(ValueError):
    """A checkpoint or spill file whose contents do not match their checksums, or that holds numbers no
    run can continue from (inf, NaN)."""
