"""Mutation testing of cellssl's training-critical modules with mutmut 3, one module at a time.

For every target of ``tools/mutation/targets.toml`` (or those named on the command line) the script:

1. builds a scratch workspace ``<workdir>/<module>/`` holding a copy of ``core/src`` (as ``src/``), the
   target's test files and ``tests/conftest.py``, a root ``conftest.py`` that makes the Python processes a
   test starts (torch.distributed ranks) import the mutated copy too, and a ``pyproject.toml`` whose
   ``[tool.mutmut]`` section mutates that one module and selects those tests (the checkout itself is never
   modified, so other work in it is not disturbed);
2. runs ``nice -n 10 mutmut run --max-children 1`` there, stopped after the target's time budget;
3. reads mutmut's per-mutant exit codes (``mutants/src/cellssl/<module>.meta``) and the diff of every
   survivor, and stores them in ``tools/mutation/results/<module>.json``.

Then it rewrites ``docs/mutation.md`` from every stored result: per module the counts of killed /
survived / timed-out / not-checked mutants, the kill rate over the non-equivalent mutants, and each
survivor with its diff, marked equivalent when ``tools/mutation/equivalent.toml`` says so (with the reason).

Usage::

    python tools/mutation/run_mutants.py                       # every target, each within its budget
    python tools/mutation/run_mutants.py objectives/ema.py          # one module
    python tools/mutation/run_mutants.py --report-only         # rewrite docs/mutation.md from stored results
    python tools/mutation/run_mutants.py --budget-scale 0.5    # half of every budget
    python tools/mutation/run_mutants.py --recheck-survivors data/augment.py   # survivors only, after new tests
    python tools/mutation/run_mutants.py --unchecked --children 2 train/trainer.py  # finish a run the budget cut
    python tools/mutation/run_mutants.py --function x_autocast train/trainer.py  # one function changed

Exit status: 0 when the runs and the report were written; 2 on a bad argument or a failed mutmut run
(e.g. the tests do not pass on the unmutated code); the log is in the workspace (``mutmut.log``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from report import load_equivalents, write_report

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TARGETS = HERE / "targets.toml"
RESULTS = HERE / "results"
REPORT = REPO / "docs" / "mutation.md"
PYTEST_INI = """
[tool.pytest.ini_options]
addopts = "-p no:cacheprovider --import-mode=importlib"
markers = ["slow: takes more than ~20 s on a 2-core CPU", "gpu: needs a CUDA device"]
filterwarnings = ["ignore::DeprecationWarning:pyarrow.*"]
"""

# The workspace's root conftest. Python processes a test starts (the torch.distributed ranks of the two-process
# tests) must import the mutated copy that the test process imports, not the installed sources: its directory
# goes first on their PYTHONPATH, and mutmut's MUTANT_UNDER_TEST reaches them through the environment. Not
# while mutmut maps tests to functions ("stats"): a rank would record its calls in its own process, where
# they are lost, and mutmut's recorder reads its configuration from the rank's working directory.
SUBPROCESS_CONFTEST = '''"""Written by tools/mutation/run_mutants.py: test subprocesses import the mutated sources."""

import importlib.util
import os
from pathlib import Path

import pytest

_MUTATED_SRC = str(Path(importlib.util.find_spec("cellssl").origin).parents[1])


@pytest.fixture(autouse=True)
def _subprocesses_import_the_mutated_copy(monkeypatch):
    if os.environ.get("MUTANT_UNDER_TEST", "") not in ("", "stats"):
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (_MUTATED_SRC, os.environ.get("PYTHONPATH")) if p))
'''

logger = logging.getLogger("mutants")


@dataclass
class Target:
    """One module to mutate: ``module`` (path under ``core/src/cellssl``), its ``tests``, a ``budget`` in s,
    test node ids to ``deselect`` from those files, and mutmut's ``isolation`` (``fork`` or ``forkserver``)."""

    module: str
    tests: list[str]
    budget: float
    deselect: list[str] = field(default_factory=list)
    isolation: str = "fork"

    @property
    def slug(self) -> str:
        return self.module.removesuffix(".py").replace("/", ".")


def load_targets(path: Path = TARGETS) -> list[Target]:
    """The targets of ``targets.toml``; raises ``ValueError`` naming a missing module or test file."""
    targets = []
    for i, entry in enumerate(tomllib.loads(path.read_text())["target"]):
        target = Target(entry["module"], list(entry["tests"]), float(entry["budget"]), list(entry.get("deselect", [])),
                        entry.get("isolation", "fork"))
        if target.isolation not in ("fork", "forkserver"):
            raise ValueError(f"{path}: target[{i}].isolation must be 'fork' or 'forkserver', got {target.isolation!r}")
        outside = [d for d in target.deselect if d.split("::")[0] not in target.tests]
        if outside:
            raise ValueError(f"{path}: target[{i}] ({target.module}) deselects {outside}, which are not in its tests")
        if not (REPO / "core" / "src" / "cellssl" / target.module).is_file():
            raise ValueError(f"{path}: target[{i}].module {target.module!r} is not a file under core/src/cellssl")
        missing = [t for t in target.tests if not (REPO / t).is_file()]
        if missing:
            raise ValueError(f"{path}: target[{i}] ({target.module}) lists missing test files {missing}")
        targets.append(target)
    return targets


def shared_data() -> Path | None:
    """The real-data folder the tests read (``$CELLSSL_TEST_DATA`` or ``../shared/data``)."""
    if os.environ.get("CELLSSL_TEST_DATA"):
        return Path(os.environ["CELLSSL_TEST_DATA"])
    candidate = REPO.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def prepare_workspace(target: Target, workdir: Path, suffix: str = "") -> Path:
    """A fresh copy of the sources and the target's tests, with mutmut and pytest configured, in
    ``workdir/<slug><suffix>``."""
    ws = workdir / f"{target.slug}{suffix}"
    if ws.exists():
        shutil.rmtree(ws)
    shutil.copytree(REPO / "core" / "src", ws / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (ws / "tests").mkdir(parents=True)
    for test in ["tests/conftest.py", *target.tests]:
        shutil.copy2(REPO / test, ws / "tests" / Path(test).name)
    (ws / "conftest.py").write_text(SUBPROCESS_CONFTEST)
    selection = json.dumps([f"tests/{Path(t).name}" for t in target.tests]
                           + [arg for d in target.deselect for arg in ("--deselect", f"tests/{Path(d).name}")])
    (ws / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        'also_copy = ["conftest.py"]\n'
        f'only_mutate = ["src/cellssl/{target.module}"]\n'
        f'process_isolation = "{target.isolation}"\n'
        f"pytest_add_cli_args_test_selection = {selection}\n"
        'pytest_add_cli_args = ["-x", "-q"]\n'
        "use_git_change_detection = false\n"
        # log calls: their messages are not behaviour the tests are meant to pin down
        "do_not_mutate_patterns = ['logger\\.\\w+\\(']\n" + PYTEST_INI
    )
    return ws


def run_mutmut(target: Target, ws: Path, budget: float, names: Sequence[str] = (),
               children: int = 1) -> tuple[bool, float]:
    """Run mutmut in ``ws`` (on the mutants ``names`` only, if given; ``children`` mutants at a time) for at
    most ``budget`` seconds; returns ``(finished, seconds)``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "true"}
    data = shared_data()
    if data is not None:
        env["CELLSSL_TEST_DATA"] = str(data)
    mutmut = Path(sys.executable).with_name("mutmut")
    command = ["nice", "-n", "10", str(mutmut), "run", "--max-children", str(children), *names]
    start = time.monotonic()
    with open(ws / "mutmut.log", "w") as log:
        # its own process group: at the budget, mutmut and the workers it forked are interrupted together
        proc = subprocess.Popen(command, cwd=ws, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # mutmut stores the results it has on an interrupt
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return False, time.monotonic() - start
    if proc.returncode != 0:
        tail = (ws / "mutmut.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"mutmut failed on {target.module} (exit {proc.returncode}); see {ws / 'mutmut.log'}:\n"
                           f"{tail}")
    return True, time.monotonic() - start


def collect(target: Target, ws: Path, finished: bool, seconds: float) -> dict[str, Any]:
    """Statuses of every mutant of the target (from mutmut's ``.meta`` file) and the diffs of survivors."""
    from mutmut.stats import status_by_exit_code

    meta_path = ws / "mutants" / "src" / "cellssl" / f"{target.module}.meta"
    exit_codes = json.loads(meta_path.read_text())["exit_code_by_key"] if meta_path.is_file() else {}
    statuses = {name: status_by_exit_code[code] for name, code in sorted(exit_codes.items())}
    survivors = diffs(ws, [name for name, status in statuses.items() if status == "survived"])
    return {"module": target.module, "tests": target.tests, "deselected": target.deselect,
            "isolation": target.isolation, "budget_s": target.budget, "seconds": round(seconds),
            "finished": finished, "counts": dict(Counter(statuses.values())), "statuses": statuses,
            "survivors": survivors, "date": time.strftime("%Y-%m-%d")}


def diffs(ws: Path, names: Sequence[str]) -> dict[str, list[str]]:
    """The changed lines of mutants ``names`` in workspace ``ws`` (see ``mutant_diffs.py``)."""
    if not names:
        return {}
    shown = subprocess.run([sys.executable, str(HERE / "mutant_diffs.py")], cwd=ws, input=json.dumps(list(names)),
                           capture_output=True, text=True, timeout=600, check=True)
    return json.loads(shown.stdout)


def load_stored(target: Target) -> dict[str, Any]:
    """The stored result of ``target``; raises ``RuntimeError`` when there is none."""
    path = RESULTS / f"{target.slug}.json"
    if not path.is_file():
        raise RuntimeError(f"no stored result {path} to continue from: run {target.module} first")
    return json.loads(path.read_text())


def recheck_survivors(target: Target, workdir: Path, budget: float, children: int = 1) -> dict[str, Any] | None:
    """Run the target's current tests on the non-equivalent survivors of its stored result only, and return
    the result with their new statuses (``None`` when there is nothing to re-check).

    :raises RuntimeError: if there is no stored result, or a survivor's diff changed (the source changed
        since the stored run, so mutant names no longer denote the same mutants: run the module in full).
    """
    stored = load_stored(target)
    equivalents = load_equivalents(HERE / "equivalent.toml")
    names = [n for n, diff in stored["survivors"].items()
             if not (n in equivalents and equivalents[n]["change"].strip() in (line.strip() for line in diff))]
    return rerun(target, workdir, budget, stored, names, children, "survivors") if names else None


def check_unchecked(target: Target, workdir: Path, budget: float, children: int = 1) -> dict[str, Any] | None:
    """Run the target's tests on the mutants its stored result lists as "not checked" (a run its budget
    stopped), merging their statuses into it (``None`` when every mutant was checked).

    :raises RuntimeError: if there is no stored result or the module's source changed since it was stored.
    """
    stored = load_stored(target)
    names = [n for n, status in stored["statuses"].items() if status == "not checked"]
    return rerun(target, workdir, budget, stored, names, children, "unchecked") if names else None


def check_function(target: Target, workdir: Path, budget: float, function: str, children: int = 1) -> dict[str, Any]:
    """Run every mutant of ``function`` (mutmut's mangled name, e.g. ``x_autocast`` or ``xǁTrainerǁfit``) with the
    target's current tests and replace that function's entries of the stored result with them: after the
    function's source changed (its mutants are then other mutants) while the rest of the module did not.

    :raises RuntimeError: if there is no stored result, the function has no mutants, or a survivor of another
        function changed (the rest of the module moved on too: run it in full).
    """
    stored = load_stored(target)
    prefix = f"cellssl.{target.slug}.{function}__mutmut_"
    kept = {n: s for n, s in stored["statuses"].items() if not n.startswith(prefix)}
    base = {**stored, "statuses": kept, "survivors": {n: d for n, d in stored["survivors"].items() if n in kept}}
    result = rerun(target, workdir, budget, base, [f"{prefix}*"], children, f"function {function}")
    if not any(n.startswith(prefix) for n in result["statuses"]):
        raise RuntimeError(f"{target.module} has no mutants of {function!r}")
    return result


def rerun(target: Target, workdir: Path, budget: float, stored: dict[str, Any], names: list[str],
          children: int = 1, kind: str = "survivors") -> dict[str, Any]:
    """Run mutants ``names`` of ``target`` with its current tests and merge their statuses into ``stored``
    (``kind``: which mutants they are, ``survivors``, ``unchecked`` or ``function <name>``, recorded in the result's
    ``rechecks``). A name with ``*`` is a pattern: the mutants it matches are run, and every other stored survivor
    must be unchanged.

    :raises RuntimeError: if a stored survivor's diff changed (the source changed since the stored run, so
        mutant names no longer denote the same mutants: run the module in full).
    """
    ws = prepare_workspace(target, workdir, suffix="-recheck")
    finished, seconds = run_mutmut(target, ws, budget, names, children)
    now = collect(target, ws, finished, seconds)
    if any("*" in n for n in names):  # a pattern: the mutants it matched; every other stored survivor must be intact
        names = [n for n in now["statuses"] if any(fnmatch.fnmatch(n, pattern) for pattern in names)]
        stored = {**stored, "statuses": {**stored["statuses"], **{n: "not checked" for n in names}}}
        known = [n for n in stored["survivors"] if n not in names]
    else:
        known = [n for n in names if n in stored["survivors"]]
    moved = [n for n, diff in diffs(ws, known).items() if diff != stored["survivors"][n]]
    if moved:
        raise RuntimeError(f"{target.module} changed since its stored run (mutants {moved[:3]} differ): run it in full")
    statuses = {**stored["statuses"], **{n: now["statuses"][n] for n in names
                                         if now["statuses"].get(n, "not checked") != "not checked"}}
    left = [n for n in names if statuses[n] == "survived"]
    survivors = {n: d for n, d in stored["survivors"].items() if n not in names}
    survivors.update({n: d for n, d in {**stored["survivors"], **now["survivors"]}.items() if n in left})
    recheck = {"kind": kind, "date": time.strftime("%Y-%m-%d"), "seconds": round(seconds), "mutants": len(names),
               "still_surviving": len(left), "tests": target.tests, "deselected": target.deselect}
    return {**stored, "statuses": statuses, "counts": dict(Counter(statuses.values())),
            "survivors": dict(sorted(survivors.items())), "rechecks": [*stored.get("rechecks", []), recheck]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to run (paths under core/src/cellssl); default: all")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cellssl-mutants")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every module's time budget")
    parser.add_argument("--report-only", action="store_true", help="only rewrite docs/mutation.md")
    parser.add_argument("--recheck-survivors", action="store_true",
                        help="run only the stored non-equivalent survivors of the modules again (after new tests)")
    parser.add_argument("--unchecked", action="store_true",
                        help="run only the mutants a module's stored result lists as not checked (budget ran out)")
    parser.add_argument("--function", metavar="NAME",
                        help="run only the mutants of this function (mutmut's name, e.g. x_autocast) after its source "
                             "changed, replacing its stored entries")
    parser.add_argument("--children", type=int, default=1,
                        help="mutants tested at a time (each test process uses one thread); default 1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        targets = load_targets()
    except (ValueError, KeyError) as exc:
        print(f"run_mutants: {exc}", file=sys.stderr)
        return 2
    known = {t.module: t for t in targets}
    unknown = [m for m in args.modules if m not in known]
    if unknown:
        print(f"run_mutants: unknown module(s) {unknown}; targets.toml lists {sorted(known)}", file=sys.stderr)
        return 2
    chosen = [known[m] for m in args.modules] if args.modules else targets
    if not args.report_only:
        RESULTS.mkdir(exist_ok=True)
        for target in chosen:
            budget = target.budget * args.budget_scale
            logger.info("mutating %s (budget %.0f s, tests %s)", target.module, budget, " ".join(target.tests))
            try:
                if args.function:
                    result = check_function(target, args.workdir, budget, args.function, args.children)
                elif args.recheck_survivors or args.unchecked:
                    rerun_some = recheck_survivors if args.recheck_survivors else check_unchecked
                    result = rerun_some(target, args.workdir, budget, args.children)
                    if result is None:
                        logger.info("  %s: no mutants to re-run", target.module)
                        continue
                else:
                    ws = prepare_workspace(target, args.workdir)
                    finished, seconds = run_mutmut(target, ws, budget, children=args.children)
                    result = collect(target, ws, finished, seconds)
            except RuntimeError as exc:
                print(f"run_mutants: {exc}", file=sys.stderr)
                return 2
            (RESULTS / f"{target.slug}.json").write_text(json.dumps(result, indent=1) + "\n")
            logger.info("  %s: %s", target.module, result["counts"])
    write_report(targets, RESULTS, HERE / "equivalent.toml", REPORT)
    logger.info("report: %s", REPORT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
