"""Mutation testing of scgenvae, one module at a time (``make mutation [MODULE=...]``).

Usage::

    python benchmarks/mutation.py metrics                 # one module
    python benchmarks/mutation.py                         # every configured module in turn
    python benchmarks/mutation.py nn --keep               # reuse the last run's mutants and
                                                          # results; retest what was not killed
    python benchmarks/mutation.py --list                  # the modules and their tests
    python benchmarks/mutation.py nn --report-only        # rewrite nn's report section from
                                                          # its last run (after editing notes)

The tool is mutmut (``[tool.mutmut]`` in pyproject.toml holds its shared settings). Each module
is a table ``[tool.scgenvae.mutation.<module>]`` in pyproject.toml:

``mutate``
    glob patterns of the source files to mutate (mutmut's ``only_mutate``);
``tests``
    the pytest arguments that select the fast tests relevant to them (mutmut's
    ``pytest_add_cli_args_test_selection``); mutmut then runs, for each mutant, only the
    selected tests that call the mutated function;
``functions`` (optional)
    fnmatch patterns of the mutant names to run and report (e.g. the model getters only).

mutmut reads its configuration from the working directory only, so each module runs in its
own directory ``.mutmut/<module>/`` (ignored by git): a ``pyproject.toml`` with the module's
settings merged in and links to ``scgenvae/`` and ``tests/``. The result of a module replaces
its section of ``docs/dev/mutation.md``: the counts, the machine and wall time, and a table of
the mutants that were not killed, each with the explanation recorded in
``benchmarks/mutation_notes.toml`` (equivalent mutants, with the reason), and the mutants that
survived an earlier run and are killed now by a test added for them.

One worker process, one torch thread: mutation runs are slow (tens of minutes per module on 2
cores) and are not part of ``make test``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from fnmatch import fnmatch
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "dev" / "mutation.md"
NOTES = ROOT / "benchmarks" / "mutation_notes.toml"
WORK = ROOT / ".mutmut"

# exit codes of mutmut's .meta files (mutmut.stats.status_by_exit_code, without importing it)
STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    37: "caught by type check",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
    -11: "segfault",
    -9: "segfault",
    None: "not checked",
    2: "interrupted",
}

REPORT_HEAD = """\
# Mutation testing

A mutant is a copy of the code with one small change (an operator, a constant, a dropped
argument); a test suite that can fail kills it. `make mutation MODULE=<module>` runs
[mutmut](https://mutmut.readthedocs.io) on one module with the fast tests relevant to it and
replaces that module's section below; `make mutation` runs every module in turn (hours on
2 cores: it is not part of `make test` or of CI). The modules, the files they mutate and the
tests they run are configured in `pyproject.toml` (`[tool.scgenvae.mutation.<module>]`, shared
settings in `[tool.mutmut]`); the driver is `benchmarks/mutation.py`.

*Killed* counts the mutants that made a selected test fail or run past mutmut's time limit
(*timeout*, a mutant that never ends). Every mutant that was not killed is listed with the
reason, recorded in `benchmarks/mutation_notes.toml`: *equivalent* (no input changes the
behaviour; "on the CPU" where only a GPU run could tell, "on valid input" where only argument
validation differs), a change of a tuning constant or of a message's wording that no stated
property fixes, or *not killed* with the test that is missing. The mutants that survived a first
run and are killed by a test written for them afterwards (`tests/test_mutation_<module>.py`) are
listed too. The tests run with hypothesis derandomised and without its example database, so
that every mutant meets the same examples.

Mutant names are mutmut's: `module.x_function__mutmut_N` or `module.xǁClassǁmethod__mutmut_N`;
`.mutmut/<module>/` keeps the last run, and `mutmut show <name>` run there prints a mutant's
diff.
"""


# loaded into every pytest run of mutmut (`-p _mutation_hypothesis`): hypothesis draws the same
# examples for every mutant and keeps no example database, so that a counterexample found for
# one mutant is not replayed against the next ones or against the original code
HYPOTHESIS_PLUGIN = """\
from hypothesis import settings

settings.register_profile("mutation", database=None, derandomize=True)
settings.load_profile("mutation")
"""


def _config() -> tuple[dict, dict]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    modules = data["tool"]["scgenvae"]["mutation"]
    return data["tool"]["mutmut"], modules


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    msg = f"cannot write {value!r} as TOML"
    raise TypeError(msg)


def _toml_table(name: str, table: dict) -> str:
    lines = [f"[{name}]"] + [f"{key} = {_toml_value(v)}" for key, v in table.items()]
    return "\n".join(lines) + "\n"


def prepare(module: str, spec: dict, shared: dict, *, keep: bool) -> Path:
    """The module's working directory: its pyproject.toml and links to the code and tests."""
    work = WORK / module
    if work.exists() and not keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    pytest_ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"
    ]
    settings = dict(shared)
    settings["only_mutate"] = list(spec["mutate"])
    settings["pytest_add_cli_args_test_selection"] = list(spec["tests"])
    settings["pytest_add_cli_args"] = [*shared.get("pytest_add_cli_args", [])]
    settings["pytest_add_cli_args"] += ["-p", "_mutation_hypothesis"]
    settings["also_copy"] = [*shared.get("also_copy", []), "_mutation_hypothesis.py"]
    (work / "_mutation_hypothesis.py").write_text(HYPOTHESIS_PLUGIN)
    text = _toml_table("tool.mutmut", settings) + "\n"
    text += _toml_table("tool.pytest.ini_options", pytest_ini)
    (work / "pyproject.toml").write_text(text)
    for name in ("scgenvae", "tests"):
        link = work / name
        if not link.exists():
            link.symlink_to(ROOT / name, target_is_directory=True)
    return work


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # mutmut puts its mutated copy first on the path itself
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        SCGENVAE_DATA_DIR=str(ROOT / "data"),
        MPLBACKEND="Agg",
        # mutmut forks a child per mutant from a process that has run the tests once; numba's
        # default OpenMP layer, once used (scanpy's normalize_total), makes every forked child
        # kill itself with SIGTERM ("fork() called from a process already using GNU OpenMP"),
        # which mutmut reports as exit -15 (suspicious). The workqueue layer survives a fork.
        NUMBA_THREADING_LAYER="workqueue",
    )
    return env


def _mutmut(work: Path, *args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    """Run mutmut in ``work``; its output is returned, or appended to ``log`` as it comes."""
    cmd = [str(Path(sys.executable).with_name("mutmut")), *args]
    if log is None:
        return subprocess.run(
            cmd, cwd=work, env=_env(), text=True, capture_output=True, check=False
        )
    with log.open("a") as out:
        return subprocess.run(cmd, cwd=work, env=_env(), stdout=out, stderr=out, check=False)


def results(work: Path, spec: dict) -> dict[str, str]:
    """{mutant name: status} of the module, restricted to its ``functions`` patterns."""
    out = {}
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        for name, code in data["exit_code_by_key"].items():
            out[name] = STATUS.get(code, "suspicious")
    patterns = spec.get("functions")
    if patterns:
        out = {k: v for k, v in out.items() if any(fnmatch(k, p) for p in patterns)}
    return out


# one process prints the diff of every mutant asked for (``mutmut show`` takes one at a time)
_SHOW_ALL = """\
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
out = {}
for line in sys.stdin:
    name, path = line.rstrip("\\n").split("\\t")
    out[name] = get_diff_for_mutant(name, path=path)
print(json.dumps(out))
"""


def diff_lines(work: Path, names: list[str]) -> dict[str, str]:
    """The changed source lines of mutants, as ``old`` → ``new``."""
    paths = {}
    for meta in (work / "mutants").rglob("*.py.meta"):
        source = str(meta.relative_to(work / "mutants")).removesuffix(".meta")
        for name in json.loads(meta.read_text())["exit_code_by_key"]:
            paths[name] = source
    todo = "".join(f"{name}\t{paths[name]}\n" for name in names)
    proc = subprocess.run(
        [sys.executable, "-c", _SHOW_ALL],
        input=todo,
        cwd=work,
        env=_env(),
        text=True,
        capture_output=True,
        check=True,
    )
    out = {}
    for name, diff in json.loads(proc.stdout).items():
        shown = diff.splitlines()
        old = [ln[1:].strip() for ln in shown if ln.startswith("-") and not ln.startswith("---")]
        new = [ln[1:].strip() for ln in shown if ln.startswith("+") and not ln.startswith("+++")]
        out[name] = f"`{' '.join(old)}` → `{' '.join(new)}`".replace("|", "\\|")
    return out


def _cpu() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def run_module(module: str, spec: dict, shared: dict, *, keep: bool, report_only: bool) -> str:
    """Run mutmut on one module (or only read its last run); return its report section."""
    if report_only:
        work = WORK / module
        if not (work / "wall_s").exists():
            msg = f"no finished run of {module} in {work}"
            raise RuntimeError(msg)
        return section(
            module, spec, work, results(work, spec), float((work / "wall_s").read_text())
        )
    work = prepare(module, spec, shared, keep=keep)
    if keep:
        # mutmut re-traces only new or changed tests: a kept run whose source changed would
        # select, for a new function, only the tests written after it. Re-collect them all.
        (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    # a kept run's wall time adds to the run it continues
    before = float((work / "wall_s").read_text()) if keep and (work / "wall_s").exists() else 0.0
    patterns = list(spec.get("functions", []))
    start = time.perf_counter()
    print(f"[{module}] mutmut run in {work.relative_to(ROOT)}", flush=True)
    log = work / "mutmut-run.log"
    log.unlink(missing_ok=True)
    proc = _mutmut(work, "run", "--max-children", "1", *patterns, log=log)
    if keep and proc.returncode == 0:
        # a kept run does not retest a mutant whose result it has: retest the ones not killed,
        # against the tests as they are now
        again = [n for n, s in results(work, spec).items() if s not in ("killed", "timeout")]
        if again:
            proc = _mutmut(work, "run", "--max-children", "1", *again, log=log)
    wall = before + time.perf_counter() - start
    status = results(work, spec)
    if proc.returncode != 0 or not status:
        tail = log.read_text()[-3000:]
        msg = f"mutmut failed on {module} (exit {proc.returncode}):\n{tail}"
        raise RuntimeError(msg)
    (work / "wall_s").write_text(f"{wall:.0f}\n")
    return section(module, spec, work, status, wall)


def _notes(module: str) -> tuple[dict, dict]:
    notes = tomllib.loads(NOTES.read_text()).get(module, {}) if NOTES.exists() else {}
    return notes.get("equivalent", {}), notes.get("killed_by", {})


def section(module: str, spec: dict, work: Path, status: dict[str, str], wall: float) -> str:
    counts = {s: list(status.values()).count(s) for s in sorted(set(status.values()))}
    total = len(status)
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    equivalent, killed_by = _notes(module)
    lines = [
        f"<!-- mutation:{module}:start -->",
        f"## {module}",
        "",
        f"Mutated: {', '.join(f'`{p}`' for p in spec['mutate'])}"
        + (
            f" (functions {', '.join(f'`{p}`' for p in spec['functions'])})"
            if spec.get("functions")
            else ""
        )
        + ".",
        f"Tests: `{' '.join(spec['tests'])}`.",
        "",
        "| mutants | killed | timeout | survived | no tests | other | killed (incl. timeout) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {total} | {counts.get('killed', 0)} | {counts.get('timeout', 0)} "
        f"| {counts.get('survived', 0)} | {counts.get('no tests', 0)} "
        f"| {total - killed - counts.get('survived', 0) - counts.get('no tests', 0)} "
        f"| {100 * killed / max(total, 1):.1f}% |",
        "",
        f"Run on {dt.date.today():%Y-%m-%d}, {_cpu()}, one worker process and one thread; "
        f"wall time {wall / 60:.1f} min with the reruns of the mutants not killed "
        f"(mutmut {_mutmut_version()}).",
        "",
    ]
    alive = {n: s for n, s in sorted(status.items()) if s not in ("killed", "timeout")}
    now_killed = {n: t for n, t in sorted(killed_by.items()) if status.get(n) == "killed"}
    diffs = diff_lines(work, [*alive, *now_killed])
    if alive:
        lines += [
            "Not killed:",
            "",
            "| mutant | change | status | why |",
            "|---|---|---|---|",
        ]
        for name, s in alive.items():
            why = equivalent.get(name, "**not explained**")
            short = name.removeprefix("scgenvae.")
            lines.append(f"| `{short}` | {diffs[name]} | {s} | {why} |")
        lines.append("")
    else:
        lines += ["Every mutant was killed.", ""]
    if now_killed:
        lines += [
            "Survived a first run, killed by a test added for them:",
            "",
            "| mutant | change | killed by |",
            "|---|---|---|",
        ]
        for name, test in now_killed.items():
            short = name.removeprefix("scgenvae.")
            lines.append(f"| `{short}` | {diffs[name]} | `{test}` |")
        lines.append("")
    lines.append(f"<!-- mutation:{module}:end -->")
    return "\n".join(lines) + "\n"


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def write_report(sections: dict[str, str], order: list[str]) -> None:
    """Replace the given modules' sections of the report, keeping the others, in ``order``."""
    old = REPORT.read_text() if REPORT.exists() else ""
    pattern = r"<!-- mutation:(\w+):start -->.*?<!-- mutation:\1:end -->\n"
    found = {m.group(1): m.group(0) for m in re.finditer(pattern, old, re.S)}
    found.update(sections)
    body = "\n".join(found[m] for m in order if m in found)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(REPORT_HEAD + "\n" + _summary(found, order) + "\n" + body)


def _summary(found: dict[str, str], order: list[str]) -> str:
    rows = ["| module | mutants | killed (incl. timeout) |", "|---|---:|---:|"]
    for module in order:
        if module not in found:
            rows.append(f"| {module} | not run | |")
            continue
        numbers = re.search(r"\n\| (\d+) \|.*\| ([\d.]+%) \|\n", found[module])
        rows.append(f"| [{module}](#{module}) | {numbers[1]} | {numbers[2]} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    shared, modules = _config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "modules", nargs="*", help=f"modules to run (default all: {list(modules)})"
    )
    parser.add_argument("--keep", action="store_true", help="reuse the last run of each module")
    parser.add_argument("--list", action="store_true", help="print the modules and exit")
    parser.add_argument("--no-report", action="store_true", help=f"do not update {REPORT.name}")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report sections from the last runs (after editing the notes)",
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, spec in modules.items():
            print(f"{name}: {' '.join(spec['mutate'])}\n    tests: {' '.join(spec['tests'])}")
        return 0
    unknown = [m for m in args.modules if m not in modules]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; configured: {list(modules)}")
    for module in args.modules or list(modules):
        text = run_module(
            module, modules[module], shared, keep=args.keep, report_only=args.report_only
        )
        print(text, flush=True)
        if not args.no_report:
            write_report({module: text}, list(modules))
    return 0


if __name__ == "__main__":
    sys.exit(main())
