"""A local checkpoint store: one file per (stage, topic, partition), replaced atomically.

The stages commit Kafka offsets only after the state those records fed is
written here, and each checkpoint carries the offset it covers.  A restarted
(or newly assigned) stage restores the checkpoint and skips records below that
offset, so a crash between "state written" and "offset committed" neither
loses nor doubles a count.

A write goes to a temporary file in the same directory, is fsynced, and then
renamed over the old file (``os.replace`` is atomic on POSIX), and the
directory is fsynced: a crash leaves either the old checkpoint or the new one,
never a torn file.  Members of one consumer group must share the directory
(one host, or a shared volume), because a partition's next owner restores the
checkpoint its previous owner wrote.

File format: ``MAGIC + version byte + 4-byte big-endian header length + JSON
header + Arrow IPC streams``; the header lists each frame's name and length
and carries small JSON metadata (offset, alert states).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from gpuslo.pipeline.errors import GpusloError

MAGIC = b"GSCK"
VERSION = 1
_LEN = struct.Struct(">I")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class CheckpointError(GpusloError):
    """A checkpoint that cannot be read or written; restarting from it would be unsafe."""


@dataclass(frozen=True)
class Checkpoint:
    """One partition's saved state: ``next_offset`` is the first record not covered."""

    next_offset: int
    frames: dict[str, pl.DataFrame] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _encode(ckpt: Checkpoint) -> bytes:
    blobs: list[tuple[str, bytes]] = []
    for name, frame in ckpt.frames.items():
        buf = io.BytesIO()
        frame.write_ipc_stream(buf, compression="uncompressed")
        blobs.append((name, buf.getvalue()))
    header = json.dumps(
        {
            "next_offset": ckpt.next_offset,
            "frames": [[n, len(b)] for n, b in blobs],
            "meta": ckpt.meta,
        },
        separators=(",", ":"),
    ).encode()
    return b"".join([MAGIC, bytes([VERSION]), _LEN.pack(len(header)), header,
                     *(b for _, b in blobs)])


def _decode(data: bytes, where: str) -> Checkpoint:
    base = len(MAGIC) + 1 + _LEN.size
    if len(data) < base or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{where}: not a gpuslo checkpoint file")
    if data[len(MAGIC)] != VERSION:
        raise CheckpointError(
            f"{where}: checkpoint version {data[len(MAGIC)]} is not supported "
            f"(this build reads version {VERSION})"
        )
    (hlen,) = _LEN.unpack_from(data, len(MAGIC) + 1)
    try:
        header = json.loads(data[base : base + hlen])
        pos = base + hlen
        frames: dict[str, pl.DataFrame] = {}
        for name, length in header["frames"]:
            frames[str(name)] = pl.read_ipc_stream(io.BytesIO(data[pos : pos + int(length)]))
            pos += int(length)
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} trailing bytes")
        return Checkpoint(int(header["next_offset"]), frames, dict(header.get("meta") or {}))
    except Exception as exc:  # JSON, Arrow and key errors all mean the same here
        raise CheckpointError(f"{where}: checkpoint is truncated or corrupt: {exc}") from exc


class CheckpointStore:
    """Checkpoints under ``root/<scope>/p<partition>.ckpt``; ``scope`` names stage and topic."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, scope: str, partition: int) -> Path:
        """Where the checkpoint of ``partition`` in ``scope`` lives."""
        return self.root / _SAFE.sub("_", scope) / f"p{partition}.ckpt"

    def read(self, scope: str, partition: int) -> Checkpoint | None:
        """The saved checkpoint, or None when there is none yet.

        Raises:
            CheckpointError: the file exists but cannot be read or parsed.
        """
        path = self.path(scope, partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        return _decode(data, str(path))

    def write(
        self,
        scope: str,
        partition: int,
        next_offset: int,
        frames: Mapping[str, pl.DataFrame],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Replace the checkpoint of ``partition`` atomically and durably."""
        path = self.path(scope, partition)
        data = _encode(Checkpoint(next_offset, dict(frames), dict(meta or {})))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot write: {exc.strerror or exc}") from exc
