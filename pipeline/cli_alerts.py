"""CLI commands registered onto the main `gpuslo` app (see pipeline/cli.py)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
