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
header + Arrow IPC streams``; the header lists each frame's name and length,
a BLAKE2b digest of the frames' bytes, and small JSON metadata (offset, alert
states, the fingerprint of the last record covered).  The digest turns a
damaged file (a bad disk, a torn copy onto a shared volume) into a clear error
before any byte of it is parsed as Arrow; files written before it existed have
none and are read without it.  Every way a file can be wrong raises
:class:`CorruptCheckpointError` naming the file; it never crashes the process.
"""

from __future__ import annotations

import contextlib
import hashlib
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

from gpuslo.pipeline.errors import GpusloError, InputError
from gpuslo.pipeline.schema import read_arrow_stream

MAGIC = b"GSCK"
VERSION = 1
_LEN = struct.Struct(">I")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class CheckpointError(GpusloError):
    """A checkpoint that cannot be read or written; restarting from it would be unsafe."""


class CorruptCheckpointError(CheckpointError, InputError):
    """A checkpoint file whose bytes are not a checkpoint this build reads; names the file."""


def _digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """One partition's saved state: ``next_offset`` is the first record not covered."""

    next_offset: int
    frames: dict[str, pl.DataFrame] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    # Fingerprint of the record at next_offset - 1 (the last one covered), when known:
    # whoever resumes checks that the log still holds it there (see StageRunner).
    last_record: int | None = None


def _encode(ckpt: Checkpoint) -> bytes:
    blobs: list[tuple[str, bytes]] = []
    for name, frame in ckpt.frames.items():
        buf = io.BytesIO()
        frame.write_ipc_stream(buf, compression="uncompressed")
        blobs.append((name, buf.getvalue()))
    body = b"".join(b for _, b in blobs)
    header = json.dumps(
        {
            "next_offset": ckpt.next_offset,
            "frames": [[n, len(b)] for n, b in blobs],
            "blake2b": _digest(body),
            "meta": ckpt.meta,
            **({"last_record": ckpt.last_record} if ckpt.last_record is not None else {}),
        },
        separators=(",", ":"),
    ).encode()
    return b"".join([MAGIC, bytes([VERSION]), _LEN.pack(len(header)), header, body])


def _decode(data: bytes, where: str) -> Checkpoint:
    base = len(MAGIC) + 1 + _LEN.size
    if len(data) < base or data[: len(MAGIC)] != MAGIC:
        raise CorruptCheckpointError(f"{where}: not a gpuslo checkpoint file")
    if data[len(MAGIC)] != VERSION:
        raise CorruptCheckpointError(
            f"{where}: checkpoint version {data[len(MAGIC)]} is not supported "
            f"(this build reads version {VERSION})"
        )
    (hlen,) = _LEN.unpack_from(data, len(MAGIC) + 1)
    try:
        if base + hlen > len(data):
            raise ValueError(f"header of {hlen} bytes runs past the end of the file")
        header = json.loads(data[base : base + hlen])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        pos = base + hlen
        digest = header.get("blake2b")
        if digest is not None and digest != _digest(data[pos:]):
            raise ValueError("digest mismatch: the file was damaged after it was written")
        next_offset = header["next_offset"]
        if isinstance(next_offset, bool) or not isinstance(next_offset, int) or next_offset < 0:
            raise ValueError(f"next_offset {next_offset!r} is not an offset")
        meta = header.get("meta") or {}
        if not isinstance(meta, dict):
            raise ValueError("meta is not a JSON object")
        last_record = header.get("last_record")
        if last_record is not None and (isinstance(last_record, bool)
                                        or not isinstance(last_record, int)):
            raise ValueError(f"last_record {last_record!r} is not a record fingerprint")
        frames: dict[str, pl.DataFrame] = {}
        for name, length in header["frames"]:
            length = int(length)
            if length < 0 or pos + length > len(data):
                raise ValueError(f"frame {name!r} of {length} bytes runs past the end")
            frames[str(name)] = read_arrow_stream(data[pos : pos + length])
            pos += length
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} trailing bytes")
        return Checkpoint(next_offset, frames, meta, last_record)
    except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
        # JSON, Arrow and the header's shape all mean the same here.
        raise CorruptCheckpointError(
            f"{where}: checkpoint is truncated or corrupt: {exc}") from exc


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
            CorruptCheckpointError: the file exists but is not a readable checkpoint.
            CheckpointError: the file exists but cannot be read.
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
        *,
        last_record: int | None = None,
    ) -> None:
        """Replace the checkpoint of ``partition`` atomically and durably."""
        path = self.path(scope, partition)
        data = _encode(Checkpoint(next_offset, dict(frames), dict(meta or {}), last_record))
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
