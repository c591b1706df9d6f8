"""Stack live-view panels so that the whole never outgrows the terminal.

rich's ``Live`` crops what does not fit at the bottom, so whatever is printed
last disappears first.  :class:`FitStack` decides instead: panels are given the
terminal's lines in order of importance, each takes what it needs of what is
left, a panel cut short says how many lines it lost, and a panel with no room
left is not drawn at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.segment import Segment
from rich.style import Style

# A panel cut to fewer lines than this is dropped instead: a table with its header and
# one row is the least worth showing.
MIN_LINES = 4


@dataclass
class FitStack:
    """Panels, most important first, within ``height`` (default: the console's) lines."""

    panels: Sequence[RenderableType]
    height: int | None = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        room = self.height or options.height or options.max_height
        for panel in self.panels:
            if room <= 0:
                return
            # max_height tells a panel that fits itself (SloStatusView) its room; height
            # stays unset, or render_lines would pad every panel to it.
            sized = options.copy()
            sized.height, sized.max_height = None, room
            lines = console.render_lines(panel, sized, pad=False)
            if len(lines) > room:
                if room < MIN_LINES:
                    return
                lost = len(lines) - (room - 1)
                lines = [*lines[:room - 1],
                         [Segment(f"… {lost} more lines (a taller terminal shows them)",
                                  Style(dim=True))]]
            for line in lines:
                yield from line
                yield Segment.line()
            room -= len(lines)


__all__ = ["MIN_LINES", "FitStack"]
