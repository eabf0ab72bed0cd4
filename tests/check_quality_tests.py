"""``make check-quality-tests``: every quality test must fail when its models train 1 epoch.

Runs ``pytest -m quality --quality-epochs 1`` (``tests/conftest.py`` then caps ``max_epochs`` of
every ``train()`` call at 1) and reads the JUnit report: the check passes only if every
selected quality test failed on an assertion (its bars). A quality test that passes, fails on
another exception, errors (a crash in set-up is no verdict on the model) or reports nothing is
listed and fails the check. align_cell_cycle's warnings on a 1-epoch latent (the ellipse fit
did not converge, the direction is weakly determined) would fail the FUCCI tests before their
bars, as pytest turns warnings into errors, so they are ignored here. Tests of
the slow set (``--slow``, the other seeds and lengths of the A549 bar) are skipped and not
counted; pass ``--slow`` after the script's name to include them. Extra arguments go to pytest.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path


def _outcomes(report: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                message = (node.get("message") or "").splitlines()
                out[name] = (kind, message[0][:160] if message else "")
                break
        else:
            out[name] = ("passed", "")
    return out


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "quality.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "quality",
            "--quality-epochs",
            "1",
            f"--junitxml={report}",
            "-p",
            "no:cacheprovider",
            "-q",
            "--tb=line",
            "-W",
            "ignore:align_cell_cycle",  # -W takes the message literally
            *argv,
        ]
        subprocess.run(cmd, cwd=root, check=False)
        if not report.exists():
            print("check-quality-tests: pytest wrote no report")
            return 1
        outcomes = _outcomes(report)
    by_kind: dict[str, list[str]] = {"failure": [], "passed": [], "error": [], "skipped": []}
    for name, (kind, message) in outcomes.items():
        if kind == "failure" and not message.startswith(("assert", "AssertionError")):
            kind = "error"  # failed, but not on an assertion
            outcomes[name] = (kind, message)
        by_kind[kind].append(name)
    print("\ncheck-quality-tests: models trained for 1 epoch")
    for name, (kind, message) in sorted(outcomes.items()):
        verdict = {"failure": "failed (good)", "passed": "PASSED", "error": "NO VERDICT"}.get(
            kind, kind
        )
        print(f"  {verdict:<14} {name}  {message}")
    n_failed, bad = len(by_kind["failure"]), by_kind["passed"] + by_kind["error"]
    print(
        f"{n_failed} of {n_failed + len(bad)} quality tests failed at 1 epoch"
        f" ({len(by_kind['skipped'])} skipped)"
    )
    if bad or not n_failed:
        print("check-quality-tests: FAILED; these quality tests did not fail on an assertion:")
        for name in bad:
            print(f"  {name}")
        return 1
    print("check-quality-tests: passed (every quality test fails when its models train 1 epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
