"""Smoke test of the benchmark harness (benchmarks/run.py): --quick end to end.

Trains every model of every workload on tiny data in one worker process and checks that the
report has every column of every table, so the harness cannot rot unnoticed. The column lists
are spelled out here on purpose: changing a table means changing this test.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

EXPECTED_TABLES = {
    "targets": ["target", "batch size", "measured", "goal", "met", "distance", "CPU"],
    "speed": [
        "model",
        "n_hidden",
        "batch size",
        "threads",
        "s/epoch (median, epochs 2-4)",
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
        "n_hidden",
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
    "thread scaling": [
        "model",
        "batch size",
        "cells/s, 1 thread",
        "cells/s, 2 threads",
        "2 / 1 threads",
    ],
    "busy node": [
        "model",
        "batch size",
        "threads",
        "step threads (idle / busy)",
        "step ms idle",
        "step ms busy",
        "busy / idle step",
        "epoch s idle",
        "worst epoch s busy",
        "worst busy epoch / idle epoch",
        "busy process CPU",
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
def quick_output(run_module, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bench")
    results = tmp / "results_cell_cycle.md"
    script = tmp / "cell_cycle_fucci.py"
    script.write_text(FAKE_FUCCI.format(results=str(results)))
    out = tmp / "RESULTS.md"
    argv = ["--quick", "--threads", "1", "--output", str(out)]
    argv += ["--fucci-script", str(script), "--fucci-results", str(results)]
    assert run_module.main(argv) == 0
    assert out.with_suffix(".json").exists()
    return out


@pytest.fixture(scope="module")
def quick_report(quick_output) -> str:
    return quick_output.read_text()


@pytest.fixture(scope="module")
def quick_json(quick_output) -> dict:
    return json.loads(quick_output.with_suffix(".json").read_text())


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
    assert list(run_module.SCALING_COLUMNS) == EXPECTED_TABLES["thread scaling"]
    assert list(run_module.BUSY_COLUMNS) == EXPECTED_TABLES["busy node"]


def test_machine_and_command_are_stated(quick_report):
    fields = ("| CPU |", "| cores |", "| torch threads | 1 |", "| date |", "| versions |")
    for field in (*fields, "| torch default threads |"):
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
    assert len(speed) == 16  # 4 models x 2 n_hidden x 2 batch sizes
    for row in speed:
        assert all(re.fullmatch(r"[\d.,]+", cell) for i, cell in enumerate(row[1:]) if i != 2), row
        assert re.fullmatch(r"\d+( \(\d+\)(, \d+ \(\d+\))*)?", row[3]), row  # threads
    scaling = _rows(quick_report, EXPECTED_TABLES["thread scaling"])
    assert [r[:2] for r in scaling] == [
        ["MultiVAE", "128"],
        ["MultiVAE", "64"],
        ["PoissonVAE", "128"],
        ["PoissonVAE", "64"],
    ]
    assert all(re.fullmatch(r"[\d.,]+", cell) for r in scaling for cell in r[1:]), scaling
    busy = _rows(quick_report, EXPECTED_TABLES["busy node"])
    assert len(busy) == 8  # 2 models x 2 batch sizes x (defaults, cores fixed)
    for row in busy:
        assert all(re.fullmatch(r"[\d.,]+", c) for c in row[4:10]), row
        assert re.fullmatch(r"\d+%", row[10]), row
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


def test_every_goal_of_issue_19_is_a_target_row(quick_report, run_module):
    targets = _rows(quick_report, EXPECTED_TABLES["targets"])
    cpu = run_module.cpu_model()
    assert all(r[6] == cpu for r in targets)
    goals = [r[3] for r in targets]
    assert goals.count("8x") == 4  # MultiVAE vs MULTIVI: 2 n_hidden x 2 batch sizes
    assert goals.count("3x") == 4
    assert goals.count("1.6x") == 2  # 1 -> 2 threads at the largest batch, both models
    assert goals.count("0.95x") == 2  # no loss at the smaller batch
    assert goals.count("<= 1.5x") == 8  # busy node: median step and worst epoch
    assert goals.count("50%") == 4  # % of matmul at batch 128 (quick: 64), 2 n_hidden
    for row in targets:
        assert row[4] in ("met", "not met"), row  # every target was measured
    assert "Goals:" in quick_report


def test_jobs_ran_with_the_thread_settings_asked(quick_json):
    for key, ans in quick_json["threads"].items():
        threads = int(key.rsplit("@t", 1)[1])
        r = ans["result"]
        assert r["num_threads_setting"] == threads
        assert list(r["step_thread_counts"]) == [str(threads)], key
    for ans in quick_json["speed"].values():
        r = ans["result"]
        assert r["num_threads_setting"] is None  # ours at defaults; scvi ignores the setting
        assert r["torch_default_threads"] >= 1


def test_busy_process_burns_a_core_and_is_killed(run_module):
    with run_module.busy_process() as burner:
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            time.sleep(0.05)
        pid = burner.proc.pid
    assert burner.proc.returncode is not None
    assert not Path(f"/proc/{pid}").exists()
    assert burner.cpu_fraction() > 0.2  # it spun (at least a fifth of a core on a busy node)


def test_worker_applies_the_job_thread_settings():
    import types

    import torch

    spec = importlib.util.spec_from_file_location("scgenvae_bench_worker", BENCH / "_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    settings = types.SimpleNamespace(num_threads="unset")
    before = torch.get_num_threads()
    try:
        job = {"torch_threads": 2, "num_threads": 2}
        worker.apply_threads(job, 1, 3, settings)
        assert (torch.get_num_threads(), settings.num_threads) == (2, 2)
        assert job["torch_default_threads"] == 3
        worker.apply_threads({"torch_threads": 0, "num_threads": None}, 1, 3, settings)
        assert (torch.get_num_threads(), settings.num_threads) == (3, None)  # both defaults
        worker.apply_threads({}, 1, 3, settings)  # the worker's own --threads for both
        assert (torch.get_num_threads(), settings.num_threads) == (1, 1)
        worker.apply_threads({}, 0, 2, settings)
        assert (torch.get_num_threads(), settings.num_threads) == (2, None)
    finally:
        torch.set_num_threads(before)
