"""Exceptions with one-line, user-facing messages."""

from __future__ import annotations


class ConfigError(ValueError):
    """An impossible or unknown setting: names the field, the value and what is allowed."""


class DataError(RuntimeError):
    """A dataset is missing, truncated, corrupt or not the expected format."""


class PayloadError(ValueError):
    """A wire payload is malformed, truncated, oversized, wrong-shape or non-finite."""
