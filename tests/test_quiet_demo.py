"""Issue 16, quiet by default: the demo at its defaults prints its "wrote ..." lines and nothing else.

Run as a user runs it (``scgenvae demo``, the command ``make demo`` calls) in a fresh process, so
that every third-party notice (Lightning's device lines and tips, scvi-tools' INFO lines,
deprecation warnings of mudata, scanpy and Lightning) would show. Slow: it trains the three demo
models at their default epochs (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_prints_only_wrote_lines(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # every warning would be printed
    proc = subprocess.run(
        [sys.executable, "-m", "scgenvae.cli", "demo", "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    other = [ln for ln in lines if not ln.startswith("wrote ")]
    assert not other, "\n".join(other[:20])
    assert sum(ln.startswith("wrote ") for ln in lines) == 7
