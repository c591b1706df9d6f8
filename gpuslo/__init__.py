"""gpuslo: observability pipeline and SLO engine for GPU / AI clusters.

The one import root.  Every module is ``gpuslo.<area>.<module>``; the area
folders (``collectors/``, ``pipeline/``, ``slo/``, ...) stay at the top of the
repository, and this package reaches them through relative symlinks, so the
wheel installs nothing but ``gpuslo`` (see docs/architecture.md, "Layout").
"""
