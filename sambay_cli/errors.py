"""User-facing errors.

Anything the user can cause (a bad path, a corrupt file, a wrong config, no network, a gated repo) is raised as
:class:`SambaYError`. The CLI turns it into one line on stderr and exit code 2 — never a traceback.
"""

from __future__ import annotations


class SambaYError(Exception):
    """An error caused by the user's input or environment, reported as one clear line."""

    exit_code = 2


class ConfigError(SambaYError):
    """A config.json that is not a (supported) SambaY configuration."""


class CheckpointError(SambaYError):
    """Missing, unexpected, mis-shaped or corrupt checkpoint tensors."""
