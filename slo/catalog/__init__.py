"""The default SLO catalog for GPU/AI fleets, shipped inside the package.

It lives here, not in an examples folder, so that an installed gpuslo (a
wheel, a container image) runs ``gpuslo demo`` and ``gpuslo rules`` on it
without a clone of the repository.  See README.md beside this file.
"""

from __future__ import annotations

from pathlib import Path

CATALOG_DIR: Path = Path(__file__).resolve().parent
