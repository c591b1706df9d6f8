"""Shared strategies for the fuzz tests: mutate real inputs byte-wise and line-wise.

Every fuzz test states one promise: whatever the bytes, the code under test
either returns or raises its documented :class:`~gpuslo.pipeline.errors.InputError`
subclass with a message naming the input; nothing else escapes.  These
strategies start from real inputs (fixtures, encoded frames, configs) so most
cases get deep into the code instead of failing at the first byte.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gpuslo.pipeline.errors import InputError


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for one fuzz test: ``examples`` cases in CI.

    ``GPUSLO_FUZZ_SCALE=20`` multiplies every count, for a long local run.
    """
    scale = float(os.environ.get("GPUSLO_FUZZ_SCALE", "1"))
    return settings(max_examples=max(1, int(examples * scale)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# Bytes that mean something to one of the formats gpuslo reads (exposition text,
# YAML, JSON, Arrow framing): splicing them in reaches more branches than random bytes.
TOKENS: tuple[bytes, ...] = (
    b"{", b"}", b'"', b"\\", b",", b"=", b" ", b"\t", b"\n", b"\r\n", b"#", b":", b"-",
    b"# TYPE x histogram\n", b"# TYPE x counter\n", b"# HELP x h\n", b"# UNIT x s\n",
    b"# EOF\n", b"{sum:2,schema:0}", b"{count:3,sum:2}", b"NaN", b"+Inf", b"-Inf", b"1e999",
    b'le="', b'quantile="0.5"', b" # {a=\"b\"} 1 2", b"_total", b"_bucket", b"_created",
    b"\xff", b"\x00", b"\x1c", b"\x0b", b"\xc3\xa9", b"null", b"~", b"[]", b"{}", b"&a",
    b"*a", b"!!python/name:x",
    b"- ", b"? ", b"|\n", b"GSLO\x01", b"GSLP\x01", b"GSCK\x01", b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
)


@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: Sequence[bytes], max_ops: int = 6) -> bytes:
    """One of ``seeds`` after 1..``max_ops`` byte-level edits.

    Edits: overwrite a byte, delete a run, insert a token or random bytes,
    duplicate a run, truncate.
    """
    data = bytearray(draw(st.sampled_from(list(seeds))))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["set", "delete", "token", "random", "dup", "truncate"]))
        pos = draw(st.integers(0, len(data))) if data else 0
        if op == "set" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "token":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif op == "random":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@st.composite
def mutated_lines(
    draw: st.DrawFn,
    seeds: Sequence[str],
    extra_lines: st.SearchStrategy[str] | None = None,
    max_ops: int = 5,
) -> str:
    """One of ``seeds`` after 1..``max_ops`` line-level edits.

    Edits: delete, duplicate, move a line, splice a line from another seed,
    insert a generated line (``extra_lines``), cut a line in two.
    """
    seed_lines = [s.split("\n") for s in seeds]
    lines = list(draw(st.sampled_from(seed_lines)))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["delete", "dup", "move", "splice", "insert", "cut"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if op == "delete" and lines:
            del lines[i]
        elif op == "dup" and lines:
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif op == "move" and lines:
            lines.insert(draw(st.integers(0, len(lines) - 1)), lines.pop(i))
        elif op == "splice":
            other = draw(st.sampled_from(seed_lines))
            lines.insert(i, draw(st.sampled_from(other)))
        elif op == "insert" and extra_lines is not None:
            lines.insert(i, draw(extra_lines))
        elif op == "cut" and lines and lines[i]:
            k = draw(st.integers(0, len(lines[i])))
            lines[i : i + 1] = [lines[i][:k], lines[i][k:]]
    return "\n".join(lines)


def yaml_scalars() -> st.SearchStrategy[Any]:
    """Values a YAML document can hold where a config expects something else."""
    return st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
        st.sampled_from(["", "0", "-1", "1e400", "5m", "nan", ".inf", "http://x", "/dev/null",
                         "SASL_SSL", "PLAIN", "counter", "openslo/v1", "SLO", "\x00"]),
    )


def yaml_trees(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Nested lists and mappings of :func:`yaml_scalars`, string-keyed mostly."""
    return st.recursive(
        yaml_scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.one_of(st.text(max_size=12), st.integers(-3, 3)), children,
                            max_size=4),
        ),
        max_leaves=max_leaves,
    )


@st.composite
def mutated_tree(draw: st.DrawFn, tree: Any, paths: Sequence[tuple[Any, ...]] = ()) -> Any:
    """A deep copy of ``tree`` with a few values replaced, keys dropped or added.

    ``paths`` lists places worth hitting (known keys); random places are
    chosen too.
    """
    out = _copy(tree)
    for _ in range(draw(st.integers(1, 4))):
        spots = list(paths) or [()]
        spots += _all_paths(out)
        path = draw(st.sampled_from(spots))
        parent, key = _locate(out, path)
        op = draw(st.sampled_from(["replace", "drop", "add", "wrap"]))
        if parent is None:
            out = draw(yaml_trees()) if op == "replace" else out
        elif op == "replace":
            _set(parent, key, draw(yaml_trees(8)))
        elif op == "drop":
            _drop(parent, key)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(yaml_trees(4))
        elif op == "wrap":
            _set(parent, key, [_get(parent, key)])
    return out


def _copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_copy(v) for v in tree]
    return tree


def _all_paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) \
        if isinstance(tree, list) else ()
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_all_paths(v, (*prefix, k)))
    return out


def _locate(tree: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    if not path:
        return None, None
    node = tree
    for k in path[:-1]:
        try:
            node = node[k]
        except (KeyError, IndexError, TypeError):
            return None, None
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int)
                                  and 0 <= path[-1] < len(node)):
        return node, path[-1]
    return None, None


def _get(parent: Any, key: Any) -> Any:
    return parent.get(key) if isinstance(parent, dict) else parent[key]


def _set(parent: Any, key: Any, value: Any) -> None:
    parent[key] = value


def _drop(parent: Any, key: Any) -> None:
    if isinstance(parent, dict):
        parent.pop(key, None)
    else:
        del parent[key]


def only_input_errors(
    call: Callable[[], object], error: type[InputError], names: Callable[[str], bool]
) -> InputError | None:
    """Run ``call``; return the documented error it raised, or None.

    Any other exception propagates (the test fails on it, and hypothesis
    shrinks the input); the documented one must have a message that ``names``
    accepts (it names the input).
    """
    try:
        call()
    except error as exc:
        message = str(exc)
        assert message, f"{type(exc).__name__} with an empty message"
        assert names(message), f"{type(exc).__name__} does not name its input: {message!r}"
        return exc
    return None
