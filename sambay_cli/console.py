"""Shared rich consoles: results go to stdout, progress and diagnostics to stderr.

Diagnostics are soft-wrapped: rich does not insert line breaks into them (a path or a command in an error message
stays whole when copied; the terminal still wraps long lines for display)."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
