"""The Prometheus text format (0.0.4), with the value formatting of each client library.

Different exporters print the same number differently (Go ``strconv 'g'``,
Python ``repr``, C ``%f``); collectors must cope, so the simulator reproduces
each one instead of normalising.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from prometheus_client.utils import floatToGoString

Labels = Sequence[tuple[str, str]]


def escape(value: str) -> str:
    """Escape a label value as the text format requires."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def go_float(v: float) -> str:
    """``strconv.FormatFloat(v, 'g', -1, 64)``: what client_golang prints (``1.8527668e+07``)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "0"
    d = Decimal(repr(float(v))).normalize()
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    nd = len(digits)
    x = nd + exp - 1  # decimal exponent of the first digit
    s = "-" if sign else ""
    if x < -4 or x >= 6:
        mant = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if nd > 1 else "")
        return f"{s}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    return s + format(abs(d), "f")


def py_float(v: float) -> str:
    """What prometheus_client (vLLM, SGLang) prints: ``1.0``, ``1.234567e+06``."""
    return str(floatToGoString(float(v)))


def cpp_float(v: float) -> str:
    """What prometheus-cpp (Triton) prints: up to 16 significant digits, no trailing ``.0``."""
    return f"{float(v):.16g}"


@dataclass
class Family:
    """One metric family: HELP, TYPE and its samples (value already formatted)."""

    name: str
    type: str
    help: str
    samples: list[tuple[str, Labels, str]] = field(default_factory=list)
    timestamped: bool = True

    def add(self, labels: Labels, value: str, suffix: str = "") -> None:
        """Append a sample named ``name + suffix``."""
        self.samples.append((self.name + suffix, labels, value))


def render(families: Iterable[Family], ts_ms: int | None = None) -> str:
    """Serialise families; ``ts_ms`` is appended to every sample of a timestamped family."""
    out: list[str] = []
    for fam in families:
        out.append(f"# HELP {fam.name} {fam.help}\n# TYPE {fam.name} {fam.type}\n")
        suffix = f" {ts_ms}" if ts_ms is not None and fam.timestamped else ""
        for name, labels, value in fam.samples:
            if labels:
                lbl = ",".join(f'{k}="{escape(v)}"' for k, v in labels)
                out.append(f"{name}{{{lbl}}} {value}{suffix}\n")
            else:
                out.append(f"{name} {value}{suffix}\n")
    return "".join(out)
