"""What every gpuslo process carries: the CLI's imports.

The DaemonSet's collector runs on every GPU node, so its memory is multiplied
by the fleet.  scikit-learn (with SciPy) is about a hundred MiB of resident
memory and only the anomaly scorer's forest needs it, so it is loaded when the
first forest is made, not when the CLI starts.
"""

from __future__ import annotations

import subprocess
import sys

PROBE = ("import sys; import gpuslo.pipeline.app.cli.main; "
         "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))")


def test_the_cli_starts_without_scikit_learn() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_forest_still_loads_it() -> None:
    probe = ("import sys; from gpuslo.anomaly.model import isolation_forest; "
             "f = isolation_forest(n_estimators=2, random_state=0); "
             "print(type(f).__module__.split('.')[0], 'sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sklearn", "True"]
