"""Smoke test of the benchmark harness (benchmarks/run.py): --quick end to end.

Trains every model of every workload on tiny data in one worker process and checks that the
report has every column of every table, so the harness cannot rot unnoticed. The column lists
are spelled out here on purpose: changing a table means changing this test.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

EXPECTED_TABLES = {
    "targets": ["target", "batch size", "measured", "goal", "met", "distance"],
    "speed": [
        "model",
        "batch size",
        "s/epoch (median, epochs 2-5)",
        "cells/s",
        "train() wall s",
        "peak RSS MiB",
        "RSS after data MiB",
        "MFLOP/cell (train step)",
        "GFLOP/s",
        "% of matmul",
    ],
    "ratios": [
        "ours / theirs",
        "batch size",
        "cells/s ratio",
        "s/epoch ratio",
        "peak RSS ratio",
        "FLOP/cell ratio",
    ],
    "quality": ["metric", "MultiVAE", "MULTIVI", "ours - theirs", "better", "trivial baseline"],
    "time to quality": [
        "epoch",
        "train s",
        "FOSCTTM",
        "AUROC ATAC from RNA",
        "Spearman RNA from ATAC",
        "time 15-NN acc.",
        "reached MULTIVI",
    ],
    "scale": [
        "model",
        "status",
        "epoch s",
        "cells/s",
        "peak RSS MiB",
        "RSS after data MiB",
        "MFLOP/cell (train step)",
        "% of matmul",
    ],
}

FAKE_FUCCI = '''
"""Stand-in for cell_cycle_fucci.py (supports --quick)."""
from pathlib import Path

RESULTS = Path({results!r})


def main(argv=None):
    assert argv == ["--quick"]
    RESULTS.write_text("## fake cell cycle\\n\\n| method | circular corr |\\n|---|---|\\n| fake | 0.5 |\\n")
'''


def _load_run():
    spec = importlib.util.spec_from_file_location("scgenvae_bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_module():
    return _load_run()


@pytest.fixture(scope="module")
def quick_report(run_module, tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("bench")
    results = tmp / "results_cell_cycle.md"
    script = tmp / "cell_cycle_fucci.py"
    script.write_text(FAKE_FUCCI.format(results=str(results)))
    out = tmp / "RESULTS.md"
    argv = ["--quick", "--threads", "1", "--output", str(out)]
    argv += ["--fucci-script", str(script), "--fucci-results", str(results)]
    assert run_module.main(argv) == 0
    assert out.with_suffix(".json").exists()
    return out.read_text()


def _header(columns: list[str]) -> str:
    return "| " + " | ".join(columns) + " |"


@pytest.mark.parametrize("name", list(EXPECTED_TABLES))
def test_every_table_has_its_columns(quick_report, name):
    assert _header(EXPECTED_TABLES[name]) in quick_report


def test_harness_columns_match_this_test(run_module):
    assert list(run_module.SPEED_COLUMNS) == EXPECTED_TABLES["speed"]
    assert list(run_module.RATIO_COLUMNS) == EXPECTED_TABLES["ratios"]
    assert list(run_module.TARGET_COLUMNS) == EXPECTED_TABLES["targets"]
    assert list(run_module.QUALITY_COLUMNS) == EXPECTED_TABLES["quality"]
    assert list(run_module.TTQ_COLUMNS) == EXPECTED_TABLES["time to quality"]
    assert list(run_module.SCALE_COLUMNS) == EXPECTED_TABLES["scale"]


def test_machine_and_command_are_stated(quick_report):
    for field in ("| CPU |", "| cores |", "| torch threads | 1 |", "| date |", "| versions |"):
        assert field in quick_report
    assert "Command: `python benchmarks/run.py --quick --threads 1" in quick_report
    assert re.search(r"\| matmul reference \| [\d.,]+ GFLOP/s", quick_report)


def _rows(report: str, columns: list[str]) -> list[list[str]]:
    lines = report.splitlines()
    start = lines.index(_header(columns)) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_every_model_ran(quick_report):
    speed = _rows(quick_report, EXPECTED_TABLES["speed"])
    assert sorted({r[0] for r in speed}) == ["MULTIVI", "MultiVAE", "PoissonVAE", "SCVI"]
    assert len(speed) == 8  # 4 models x 2 batch sizes
    for row in speed:
        assert all(re.fullmatch(r"[\d.,]+", cell) for cell in row[1:]), row
    scale = _rows(quick_report, EXPECTED_TABLES["scale"])
    assert [r[1] for r in scale] == ["finished", "finished"]
    quality = _rows(quick_report, EXPECTED_TABLES["quality"])
    assert all(r[1] != "n/a" and r[2] != "n/a" for r in quality), quality
    assert "failed" not in quick_report


def test_fucci_table_is_included(quick_report):
    assert "| fake | 0.5 |" in quick_report
    assert "### fake cell cycle" in quick_report  # its heading nested under section 3


def test_missing_fucci_script_is_reported(run_module, tmp_path):
    lines = run_module.workload_fucci(
        run_module.QUICK, None, tmp_path / "absent.py", tmp_path / "absent.md", {}
    )
    assert any("does not exist" in line for line in lines)


def test_workloads_must_be_known(run_module):
    with pytest.raises(SystemExit, match="subset of 1,2,3,4"):
        run_module.main(["--workloads", "1,5"])


def test_target_rows(run_module):
    met = run_module.target_row("x", 128, 4.5, 4.0)
    assert met[4] == "met"
    assert met[5].startswith("+0.50x")
    short = run_module.target_row("x", 128, 30.0, 40.0, "%")
    assert short[4] == "not met"
    assert short[5].startswith("-10.0 points")
    assert run_module.target_row("x", 128, float("nan"), 4.0)[4] == "not measured"
