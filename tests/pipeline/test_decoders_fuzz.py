"""Fuzz the record decoders and the checkpoint reader: a damaged input is an error, never a crash.

``schema.decode`` (``gpuslo.samples``), ``slo.wire.decode_partials``
(``gpuslo.sli``) and ``CheckpointStore.read`` take bytes from outside the
process.  Whatever the bytes, each returns or raises its documented
:class:`~gpuslo.pipeline.errors.InputError` subclass with a message that
names what was being read.  Before the fix, polars' IPC reader aborted the
whole interpreter on some damaged streams (a length field that asked for
10^17 bytes), so those regression cases run in a child process.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tempfile
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from fuzzing import fuzz_settings, mutated_bytes, only_input_errors
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from gpuslo.pipeline.errors import InputError
from gpuslo.pipeline.schema import (
    MAGIC,
    SchemaError,
    decode,
    encode,
    frame_from_rows,
    write_framed,
)
from gpuslo.pipeline.stages.checkpoint import (
    CheckpointError,
    CheckpointStore,
    CorruptCheckpointError,
)
from gpuslo.slo.sli import PARTIAL_SCHEMA
from gpuslo.slo.wire import PartialsError, decode_partials, encode_partials

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "fuzz"

FRAME = frame_from_rows([
    (1_700_000_000_000, "node-1", "dcgm", "DCGM_FI_DEV_GPU_TEMP", "gauge", 71.0, "GPU-1",
     {"UUID": "GPU-1", "gpu": "0", "modelName": "NVIDIA H100"}),
    (1_700_000_000_001, "node-2", "kvcache", "vllm:num_requests_waiting", "gauge",
     float("nan"), "", {}),
    (1_700_000_000_002, "node-2", "rdma", "x_total", "counter", 1e18, "mlx5_0/1",
     {"device": "mlx5_0", "port": "1"}),
])
PARTIALS = pl.DataFrame(
    {"partition": [0, 3], "slo": ["ttft", "gpu-temp"], "scope": ["", "node=a"],
     "minute": [datetime(2024, 1, 1, tzinfo=UTC)] * 2, "good": [3.0, 0.0], "total": [4.0, 1.0]},
    schema=PARTIAL_SCHEMA,
)
# Both wire versions: version 2 (dictionary-encoded series, the default) and version 1.
SAMPLE_SEEDS = [encode(FRAME), encode(FRAME.head(0)), encode(FRAME.head(1)),
                encode(FRAME, version=1), encode(FRAME.head(1), version=1)]
PARTIAL_SEEDS = [encode_partials(PARTIALS), encode_partials(PARTIALS.head(0))]


def _checkpoint_bytes() -> list[bytes]:
    with tempfile.TemporaryDirectory() as d:
        store = CheckpointStore(d)
        store.write("s", 0, 42, {"state": FRAME, "partials": PARTIALS},
                    {"alerts": {"ttft": "firing"}})
        store.write("s", 1, 0, {})
        return [store.path("s", 0).read_bytes(), store.path("s", 1).read_bytes()]


CHECKPOINT_SEEDS = _checkpoint_bytes()
CHECKPOINT_DIR = Path(tempfile.mkdtemp(prefix="gpuslo-fuzz-ckpt-"))


@fuzz_settings(200)
@given(st.one_of(mutated_bytes(SAMPLE_SEEDS + PARTIAL_SEEDS), st.binary(max_size=64)))
def test_sample_decode_returns_a_frame_or_a_schema_error(data: bytes) -> None:
    only_input_errors(lambda: decode(data), SchemaError,
                      lambda m: "sample frame" in m or "expected bytes" in m)


@fuzz_settings(200)
@given(st.one_of(mutated_bytes(PARTIAL_SEEDS + SAMPLE_SEEDS), st.binary(max_size=64)))
def test_partials_decode_returns_a_frame_or_a_partials_error(data: bytes) -> None:
    only_input_errors(lambda: decode_partials(data), PartialsError,
                      lambda m: "partial-count frame" in m or "expected bytes" in m)


@fuzz_settings(150)
@given(mutated_bytes(CHECKPOINT_SEEDS))
def test_checkpoint_read_returns_a_checkpoint_or_names_the_damaged_file(data: bytes) -> None:
    store = CheckpointStore(CHECKPOINT_DIR)
    path = store.path("fuzz", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    only_input_errors(lambda: store.read("fuzz", 0), CorruptCheckpointError,
                      lambda m: m.startswith(f"{path}: "))


def test_every_documented_decoder_error_is_an_input_error() -> None:
    for error in (SchemaError, PartialsError, CorruptCheckpointError):
        assert issubclass(error, InputError)
    assert issubclass(CorruptCheckpointError, CheckpointError)  # old handlers still catch it


@pytest.mark.parametrize("reader", ["decode", "checkpoint"])
def test_a_stream_that_made_polars_abort_is_a_clean_error(reader: str, tmp_path: Path) -> None:
    # In a child process: before the fix this input aborted the interpreter
    # ("memory allocation of 19703248369745993 bytes failed"), which would take
    # the whole test run down with it.
    if reader == "decode":
        code = f"""
            from pathlib import Path
            from gpuslo.pipeline.schema import SchemaError, decode
            try:
                decode(Path({str(FUZZ_DIR / 'sample-frame-polars-abort.bin')!r}).read_bytes())
            except SchemaError as exc:
                print("SchemaError:", exc)
            """
    else:
        ckpt = tmp_path / "s" / "p0.ckpt"
        ckpt.parent.mkdir()
        ckpt.write_bytes((FUZZ_DIR / "checkpoint-polars-abort.ckpt").read_bytes())
        code = f"""
            from gpuslo.pipeline.stages.checkpoint import CheckpointStore, CorruptCheckpointError
            try:
                CheckpointStore({str(tmp_path)!r}).read("s", 0)
            except CorruptCheckpointError as exc:
                print("CorruptCheckpointError:", exc)
            """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = ("SchemaError: sample frame body" if reader == "decode"
                else f"CorruptCheckpointError: {tmp_path / 's' / 'p0.ckpt'}: checkpoint is "
                     "truncated or corrupt")
    assert done.stdout.startswith(expected), done.stdout


def test_a_damaged_checkpoint_body_is_caught_by_its_digest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.write("s", 0, 7, {"state": FRAME})
    path = store.path("s", 0)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01  # one bit inside the last Arrow buffer
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="digest mismatch"):
        store.read("s", 0)


def test_a_checkpoint_written_before_the_digest_still_reads(tmp_path: Path) -> None:
    blob = encode(FRAME, version=1)[5:]  # the Arrow stream alone (a plain frame)
    header = json.dumps({"next_offset": 9, "frames": [["state", len(blob)]], "meta": {"k": 1}},
                        separators=(",", ":")).encode()
    path = CheckpointStore(tmp_path).path("s", 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GSCK\x01" + struct.pack(">I", len(header)) + header + blob)
    ckpt = CheckpointStore(tmp_path).read("s", 0)
    assert ckpt is not None and ckpt.next_offset == 9 and ckpt.meta == {"k": 1}
    assert_frame_equal(ckpt.frames["state"], FRAME)


@pytest.mark.parametrize(("header", "reason"), [
    ({"next_offset": -1, "frames": []}, "next_offset -1 is not an offset"),
    ({"next_offset": "7", "frames": []}, "next_offset '7' is not an offset"),
    ({"next_offset": 1, "frames": [], "meta": [1]}, "meta is not a JSON object"),
    ([1, 2], "header is not a JSON object"),
    ({"next_offset": 1, "frames": [["a", 10**9]]}, "runs past the end"),
])
def test_a_checkpoint_header_of_the_wrong_shape_is_named(
    tmp_path: Path, header: object, reason: str
) -> None:
    raw = json.dumps(header).encode()
    path = CheckpointStore(tmp_path).path("s", 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GSCK\x01" + struct.pack(">I", len(raw)) + raw)
    with pytest.raises(CorruptCheckpointError, match=reason):
        CheckpointStore(tmp_path).read("s", 0)


def test_an_enum_column_with_other_values_is_refused_before_polars_sees_it() -> None:
    other = FRAME.with_columns(pl.col("kind").cast(pl.String).cast(pl.Enum(["gauge", "counter"])))
    with pytest.raises(SchemaError, match="column 'kind' is not the expected enum"):
        decode(write_framed(other, MAGIC, 1))  # version 1: a plain Arrow frame
