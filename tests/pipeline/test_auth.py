"""Credentials: token files re-read on rotation, never printed, scrubbed from every message."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gpuslo.pipeline import auth

TOKEN_A = "eyJhbGciOiJSUzI1NiJ9.tokenA.sig"
TOKEN_B = "eyJhbGciOiJSUzI1NiJ9.tokenB.sig"


def test_token_file_is_reread_when_it_rotates(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A + "\n")
    now = [0.0]
    tok = auth.BearerTokenFile(path, max_age_s=60.0, clock=lambda: now[0])
    assert tok.get().reveal() == TOKEN_A
    # Rotation the way the kubelet does it: a new file swapped in (new inode).
    new = tmp_path / "token.new"
    new.write_text(TOKEN_B)
    os.replace(new, path)
    assert tok.get().reveal() == TOKEN_B
    assert tok.reloads == 2
    # A same-stat rewrite is still caught after max_age_s.
    st = os.stat(path)
    path.write_text(TOKEN_A.replace("A", "C"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    now[0] = 61.0
    assert tok.get().reveal() == TOKEN_A.replace("A", "C")


def test_token_errors_name_the_path_never_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    with pytest.raises(auth.TokenError, match="cannot stat token file"):
        auth.BearerTokenFile(path).get()
    path.write_text("  \n")
    with pytest.raises(auth.TokenError, match="is empty"):
        auth.BearerTokenFile(path).get()
    path.write_text(TOKEN_A)
    tok = auth.BearerTokenFile(path)
    secret = tok.get()
    path.unlink()
    with caplog.at_level(logging.WARNING):
        assert tok.get() == secret  # keeps serving the last good token
    assert str(path) in caplog.text and TOKEN_A not in caplog.text
    assert TOKEN_A not in repr(secret) and TOKEN_A not in f"{secret}" and TOKEN_A not in str(tok)


def test_redact() -> None:
    s = auth.Secret(TOKEN_A)
    assert auth.redact(f"header Authorization: Bearer {TOKEN_A} x", [s]) == (
        "header Authorization: Bearer <redacted> x")
    assert auth.redact(f"... {TOKEN_A} ...", [s]) == "... <redacted> ..."
    assert auth.redact("Bearer other-token", []) == "Bearer <redacted>"


def test_basic_auth_header_is_redacted_too() -> None:
    header = auth.basic_auth_header("user", "pa55")["Authorization"]
    assert header.startswith("Basic ") and "pa55" not in header  # base64, not plain text
    assert auth.redact(f"sent Authorization: {header}", []) == (
        "sent Authorization: Basic <redacted>")
