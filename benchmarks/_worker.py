"""Worker process of the benchmark harness (started by ``run.py``; not meant to be run by hand).

Reads one JSON job per line on stdin and answers one JSON line on the protocol channel (the
original stdout). Anything the libraries print goes to stderr, which ``run.py`` sends to a log
file. With ``run.py``'s default every job gets a fresh worker, so ``ru_maxrss`` is per job.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def fucci_job(job: dict) -> dict:
    """Call ``main`` of the cell-cycle benchmark script and collect its markdown table."""
    import importlib.util
    import inspect
    import time

    script = Path(job["script"])
    results = Path(job["results"])
    if not script.exists():
        return {
            "status": "missing",
            "note": f"`{script.name}` not found: cell-cycle benchmark not run.",
        }
    source = script.read_text()
    argv = ["--quick"] if job.get("quick") else []
    if argv and "--quick" not in source:
        return {
            "status": "skipped",
            "note": f"`{script.name}` has no `--quick` mode: skipped in --quick.",
        }
    spec = importlib.util.spec_from_file_location("cell_cycle_fucci", script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(script.parent))
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if main is None:
        return {"status": "no-main", "note": f"`{script.name}` has no `main` function: not run."}
    t0 = time.perf_counter()
    old_argv = sys.argv
    sys.argv = [str(script), *argv]
    try:
        ret = main(argv) if inspect.signature(main).parameters else main()
    finally:
        sys.argv = old_argv
    seconds = time.perf_counter() - t0
    if isinstance(ret, str) and ret.lstrip().startswith(("|", "#")):
        return {"status": "ok", "markdown": ret, "seconds": seconds}
    if results.exists() and results.stat().st_mtime >= t0 - 1:
        return {"status": "ok", "markdown": results.read_text(), "seconds": seconds}
    return {
        "status": "no-results",
        "note": f"`{script.name}` ran but wrote no `{results.name}`.",
        "seconds": seconds,
    }


def apply_threads(job: dict, threads: int, torch_default: int, settings) -> None:
    """Set torch's thread count and ``scgenvae.settings.num_threads`` for one job.

    ``job["torch_threads"]``: 0 = torch's own default, ``n`` = ``n``; absent = the worker's
    ``threads`` (0 = torch's default). ``job["num_threads"]``: the scgenvae setting (``None`` =
    chosen from measurement); absent = the worker's ``threads`` (``None`` when 0), so that both
    packages run at the same count. Set for every job, since ``--quick`` shares one worker.
    """
    import torch

    torch_threads = job.get("torch_threads", threads)
    torch.set_num_threads(torch_threads if torch_threads > 0 else torch_default)
    settings.num_threads = job.get("num_threads", threads or None)
    job["torch_default_threads"] = torch_default


def _tasks() -> dict:
    import _quality
    import _speed

    return {
        "env": _speed.env_job,
        "make_synthetic": _speed.make_synthetic_job,
        "make_scale": _speed.make_scale_job,
        "speed": _speed.speed_job,
        "a549": _quality.a549_job,
        "fucci": fucci_job,
    }


def main() -> None:
    """Serve jobs until stdin closes."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library output goes to the log, not to the protocol channel
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    import torch

    # imported before any set_num_threads: its default thread choice reads torch's own default
    import scgenvae

    torch_default = torch.get_num_threads()
    tasks = _tasks()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            apply_threads(job, threads, torch_default, scgenvae.settings)
            answer = {"ok": True, "result": tasks[job["task"]](job)}
        except Exception as err:  # noqa: BLE001 - reported to the orchestrator, which goes on
            answer = {
                "ok": False,
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(),
            }
        proto.write(json.dumps(answer, default=_json_default) + "\n")


if __name__ == "__main__":
    main()
