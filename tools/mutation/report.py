"""``docs/mutation.md`` from the stored mutmut results (``tools/mutation/results/*.json``).

Per module: mutants in total, killed (a test failed), timed out (the tests hung: counted as caught), crashed,
survived, of those equivalent (listed in ``equivalent.toml`` with the reason they cannot be told apart from
the original), "no tests" (no selected test calls the mutated function: a gap, counted as not killed) and
not checked (the time budget ran out first, or mutmut skipped them). The kill rate is
``(killed + timed out + crashed) / (checked - equivalent)``.

An entry of ``equivalent.toml`` names a mutant and the ``+`` line of its diff; an entry whose line no longer
matches the stored diff (the source changed, mutant numbers moved) is reported as stale and not applied.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CAUGHT = ("killed", "caught by type check", "timeout", "segfault")
UNCHECKED = ("not checked", "skipped", "check was interrupted by user")

HEADER = """# Mutation testing

Mutation testing plants one small bug (a *mutant*: `<` for `<=`, a constant off by one, a dropped call, a
string changed) at a time into a module and runs the tests that exercise it. A mutant the tests do not
notice (*survived*) marks behaviour no test pins down. `make mutants` runs [mutmut](https://mutmut.readthedocs.io)
3 over the training-critical modules listed in `tools/mutation/targets.toml`, each in a scratch copy of the
sources (the checkout is not touched), with one worker under `nice -n 10` and a time budget per module, and
rewrites this page from the stored results (`tools/mutation/results/`). It is not part of CI.

    make mutants                                                    # every module, each within its budget
    .venv/bin/python tools/mutation/run_mutants.py objectives/ema.py     # one module
    .venv/bin/python tools/mutation/run_mutants.py --report-only    # rewrite this page
    .venv/bin/python tools/mutation/run_mutants.py --recheck-survivors data/augment.py  # its survivors only
    .venv/bin/python tools/mutation/run_mutants.py --unchecked --children 2 train/trainer.py  # what a budget left

A re-check runs the module's current tests on the stored non-equivalent survivors only (after tests were
added for them) and updates their statuses; it refuses when a survivor's diff changed (the source moved on).

Kill rate = (killed + timed out + crashed) / (mutants checked - equivalent). "No tests" mutants (no selected
test calls the function) count as not killed. mutmut 3 mutates code inside functions and methods only, and
skips functions with decorators other than `@staticmethod` / `@classmethod` (e.g. `@torch.no_grad()`):
module-level constants and such functions are not covered by these figures. Calls to `logger.*` are not
mutated.
"""


def load_equivalents(path: Path) -> dict[str, dict[str, str]]:
    """``mutant name -> {"change": "+ ...", "reason": ...}`` from ``equivalent.toml`` (empty if absent)."""
    if not path.is_file():
        return {}
    entries = tomllib.loads(path.read_text()).get("equivalent", [])
    return {e["mutant"]: {"change": e["change"], "reason": e["reason"]} for e in entries}


def summarise(result: dict[str, Any], equivalents: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Counts of one module's result, with equivalent survivors separated (stale entries listed)."""
    statuses: dict[str, str] = result["statuses"]
    survivors: dict[str, list[str]] = result["survivors"]
    equivalent, stale = [], []
    for name in survivors:
        entry = equivalents.get(name)
        if entry is None:
            continue
        if entry["change"].strip() in (line.strip() for line in survivors[name]):
            equivalent.append(name)
        else:
            stale.append(name)
    values = list(statuses.values())
    checked = sum(1 for s in values if s not in UNCHECKED)
    caught = sum(1 for s in values if s in CAUGHT)
    denominator = checked - len(equivalent)
    return {
        "total": len(values), "killed": values.count("killed") + values.count("caught by type check"),
        "timeout": values.count("timeout"), "crashed": values.count("segfault"), "survived": values.count("survived"),
        "equivalent": equivalent, "stale": stale, "no_tests": values.count("no tests"),
        "suspicious": values.count("suspicious"), "not_checked": len(values) - checked, "checked": checked,
        "rate": caught / denominator if denominator > 0 else None,
    }


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def load_notes(path: Path) -> dict[str, str]:
    """``module -> note`` from ``notes.toml`` (what a reader of a module's figures must know; empty if absent)."""
    if not path.is_file():
        return {}
    return {e["module"]: e["text"] for e in tomllib.loads(path.read_text()).get("note", [])}


def write_report(targets: Sequence[Any], results_dir: Path, equivalents_path: Path, out: Path) -> None:
    """Write ``out`` (markdown) from the results of ``targets`` found in ``results_dir``, with the notes of
    ``notes.toml`` beside ``equivalents_path``."""
    equivalents = load_equivalents(equivalents_path)
    notes = load_notes(equivalents_path.with_name("notes.toml"))
    lines = [HEADER, "## Kill rate per module", "",
             "| module | mutants | killed | timed out | survived (equivalent) | no tests | not checked | kill rate "
             "| run |",
             "|---|---|---|---|---|---|---|---|---|"]
    details: list[str] = []
    totals = {"caught": 0, "denominator": 0}
    for target in targets:
        path = results_dir / f"{target.slug}.json"
        if not path.is_file():
            lines.append(f"| `{target.module}` | not run yet | | | | | | | |")
            continue
        result = json.loads(path.read_text())
        s = summarise(result, equivalents)
        run = f"{result['date']}, {result['seconds']} s" + ("" if result["finished"] else ", budget reached")
        for recheck in result.get("rechecks", []):
            kind = recheck.get("kind", "survivors")
            what = ("unchecked mutants run" if kind == "unchecked" else "survivors re-checked" if kind == "survivors"
                    else f"mutants of `{kind.removeprefix('function ')}` (changed) run")
            run += f"; {recheck['mutants']} {what} {recheck['date']} ({recheck['seconds']} s)"
        lines.append(f"| `{target.module}` | {s['total']} | {s['killed'] + s['crashed']} | {s['timeout']} | "
                     f"{s['survived']} ({len(s['equivalent'])}) | {s['no_tests']} | {s['not_checked']} | "
                     f"{_rate(s['rate'])} | {run} |")
        totals["caught"] += s["killed"] + s["crashed"] + s["timeout"]
        totals["denominator"] += s["checked"] - len(s["equivalent"])
        survivors = result["survivors"]
        if not survivors:
            continue
        tests = ", ".join(f"`{t}`" for t in result["tests"])
        if result.get("deselected"):
            tests += f" (without {', '.join(f'`{d}`' for d in result['deselected'])})"
        rechecks = result.get("rechecks", [])
        if rechecks and rechecks[-1]["tests"] != result["tests"]:
            tests += f"; survivors re-checked with {', '.join(f'`{t}`' for t in rechecks[-1]['tests'])}"
        details += [f"### `{target.module}`", "", f"Tests: {tests}.", ""]
        for name, diff in survivors.items():
            if name in s["equivalent"]:
                tag = f"equivalent: {equivalents[name]['reason']}"
            elif name in s["stale"]:
                tag = "SURVIVED (an equivalent.toml entry names it, but its diff changed: re-check it)"
            else:
                tag = "SURVIVED: no test kills it yet"
            details += [f"- `{name}` ({tag})", "", "  ```diff", *[f"  {line}" for line in diff], "  ```", ""]
    overall = totals["caught"] / totals["denominator"] if totals["denominator"] else None
    lines += ["", f"Over the modules run: {_rate(overall)} of {totals['denominator']} non-equivalent mutants "
                  "checked were killed.", ""]
    run = [t.module for t in targets if t.module in notes and (results_dir / f"{t.slug}.json").is_file()]
    if run:
        lines += ["## Notes", "", *[f"- `{module}`: {notes[module]}" for module in run], ""]
    if details:
        lines += ["## Surviving mutants", "", *details]
    out.write_text("\n".join(lines).rstrip() + "\n")
