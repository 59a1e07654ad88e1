"""Plant five known training bugs, one at a time, and check that the test suite catches each.

The bugs are those an outside mutation pass found surviving the earlier tests: the teacher update never
called, gradient clipping computed but not applied, the linear probe refitted on the fit rows only, local
crops drawn with the global crop scale, and the per-dataset sampling weights ignored. Each is applied to a
scratch copy of ``core/src`` (the checkout is not modified) that shadows the installed package through
``PYTHONPATH``; the given test files run against it and must fail.

Usage::

    python tools/mutation/planted_bugs.py            # all five; exit status 1 if one is not caught

A pattern that no longer matches the source (the code moved on) is reported as such, with exit status 2.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class PlantedBug:
    """A regex substitution in one file of ``core/src/cellssl`` and the tests that must catch it."""

    name: str
    file: str
    pattern: str
    replacement: str
    tests: tuple[str, ...]


BUGS = (
    PlantedBug("teacher update never called", "train/trainer.py",
               r"self\.objective\.update_teacher\(values\.teacher_momentum\)", "pass",
               ("tests/test_training_invariants.py",)),
    PlantedBug("gradient clipping not applied", "train/trainer.py",
               r"clip_grad_norm_\(self\.parameters,\s*self\.section\.clip_grad\)",
               'clip_grad_norm_(self.parameters, float("inf"))', ("tests/test_training_invariants.py",)),
    PlantedBug("probe refit on the fit rows only", "eval/engines/linear_probe.py", r"train\(all_x, all_y,",
               "train(fit_x, fit_y,",
               ("tests/test_probe_refit.py",)),
    PlantedBug("local crops with the global scale", "objectives/dino.py", r"\bmc\.local_scale\b", "mc.global_scale",
               ("tests/test_local_crops.py",)),
    PlantedBug("per-dataset sampling weights ignored", "train/trainer.py",
               r"BatchPlan\(self\.views\.sizes, section\.batch_size, seed, weights,",
               "BatchPlan(self.views.sizes, section.batch_size, seed, None,", ("tests/test_dataset_weights.py",)),
)


def plant(bug: PlantedBug, src: Path) -> bool:
    """Apply ``bug`` to the copy ``src``; False if its pattern does not match."""
    path = src / "cellssl" / bug.file
    text = path.read_text()
    changed, count = re.subn(bug.pattern, bug.replacement, text)
    if count == 0:
        return False
    path.write_text(changed)
    return True


def main() -> int:
    status = 0
    for bug in BUGS:
        with tempfile.TemporaryDirectory(prefix="cellssl-planted-") as tmp:
            src = Path(tmp) / "src"
            shutil.copytree(REPO / "core" / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            if not plant(bug, src):
                print(f"PATTERN NOT FOUND  {bug.name}: {bug.pattern!r} in {bug.file}")
                status = max(status, 2)
                continue
            env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *bug.tests],
                                  cwd=REPO, env=env, capture_output=True, text=True)
            caught = proc.returncode == 1
            failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
            print(f"{'caught' if caught else 'NOT CAUGHT':<18} {bug.name}: {', '.join(failed) or proc.stdout[-300:]}")
            if not caught:
                status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
