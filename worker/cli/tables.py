"""How the operator commands print: the console their tables go to, and the cells' formats."""

from __future__ import annotations

import os
from datetime import datetime

from rich.console import Console

from worker.vocabulary import DeliveryState

PIPED_WIDTH = 200  # columns of a table printed to a pipe or a file


def _stdout() -> Console:
    """The console the tables go to. Piped into a file or grep, rich would fold them to 80
    columns; there, a wide table on long lines reads better."""
    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        return Console(width=PIPED_WIDTH)
    return out


_STATE_STYLE = {
    DeliveryState.PENDING: "yellow",
    DeliveryState.DELIVERED: "green",
    DeliveryState.PARKED: "magenta",
    DeliveryState.FAILED: "red",
}


def _state(state: str, text: str | None = None) -> str:
    """``text`` (default: the state itself) in the colour of delivery state ``state``."""
    style = _STATE_STYLE.get(DeliveryState(state), "")
    return f"[{style}]{text or state}[/]" if style else text or state


def _short(text: str | None, limit: int = 60) -> str:
    if not text:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _when(iso: str | None) -> str:
    """An ISO timestamp as the tables show it: UTC, to the second."""
    return f"{datetime.fromisoformat(iso):%Y-%m-%d %H:%M:%S}" if iso else "-"


def _age(seconds: float) -> str:
    """``3m12s``, ``2h05m``, ``4d03h``: two units are enough to see how late."""
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s"
