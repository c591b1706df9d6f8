"""A real headless Chromium (Debian ``chromium``) driven through Playwright, for page tests.

No browser is downloaded: Playwright's driver launches the system binary, in a
fresh profile, with everything that could reach the network switched off.  Each
page records every request it makes and every console message and page error,
so a test can assert that a page stays on its host and logs no error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Request, sync_playwright
from servers import require_binary

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

ROOT = Path(__file__).resolve().parents[1]


def artifacts_dir(name: str) -> Path:
    """Where a test leaves what a person may want to look at (screenshots).

    ``GPUSLO_TEST_ARTIFACTS`` or ``test-artifacts/`` at the repository root (ignored by git).
    """
    base = Path(os.environ.get("GPUSLO_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    out = base / name
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class PageLog:
    """What one page asked for and said."""

    requests: list[str] = field(default_factory=list)
    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind == "error"] + self.errors


@contextmanager
def chromium(profile: Path, *, width: int = 1440, height: int = 900) -> Iterator[BrowserContext]:
    """A Chromium context in a fresh profile at ``profile`` (skipped without the package,
    failed under CI=true)."""
    exe = require_binary("chromium", "chromium")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=exe, args=FLAGS, headless=True,
            viewport={"width": width, "height": height}, service_workers="block",
        )
        try:
            yield ctx
        finally:
            ctx.close()


def watched(page: Page) -> PageLog:
    """Start recording ``page``'s requests, console messages and uncaught errors."""
    log = PageLog()

    def on_request(r: Request) -> None:
        log.requests.append(r.url)

    def on_console(m: ConsoleMessage) -> None:
        log.console.append((m.type, m.text))

    page.on("request", on_request)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: log.errors.append(str(exc)))
    return log
