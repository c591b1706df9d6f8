"""Single key presses for a live view, without Enter and without breaking Ctrl-C.

While :func:`key_presses` is active the terminal is in cbreak mode (keys arrive
one by one, not echoed; signals such as Ctrl-C still work) and each key read
from standard input is handed to a callback on the event loop.  When standard
input is not a terminal (piped, a test, a service) nothing is changed and the
view simply has no keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def key_presses(on_key: Callable[[str], object]) -> Iterator[bool]:
    """Call ``on_key`` with each key typed while the block runs; yields whether keys work.

    Must be entered inside a running event loop.  The terminal's settings are
    restored on exit, however the block ends.
    """
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        yield False
        return
    fd = stdin.fileno()
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield False
        return
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        for ch in data.decode(errors="ignore"):
            on_key(ch)

    tty.setcbreak(fd, termios.TCSANOW)  # ISIG stays on: Ctrl-C still sends SIGINT
    loop.add_reader(fd, readable)
    try:
        yield True
    finally:
        loop.remove_reader(fd)
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


__all__ = ["key_presses"]
