"""Start-up time of the ``cellssl`` command beside the time to import torch, measured in the same run.

Each command runs in a fresh Python process (what a user waits for when typing it); the median of
``--repeats`` runs is printed for ``cellssl --help``, ``cellssl plugins``, ``cellssl config show
configs/quickstart.yaml`` and ``python -c "import torch"``, with each command's ratio to the torch import
and whether the command imported torch (checked with ``python -X importtime``).

    python benchmarks/cli_startup.py              # 7 runs each
    python benchmarks/cli_startup.py --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMANDS: dict[str, list[str]] = {
    "cellssl --help": ["-m", "cellssl.cli", "--help"],
    "cellssl plugins": ["-m", "cellssl.cli", "plugins"],
    "cellssl config show configs/quickstart.yaml": ["-m", "cellssl.cli", "config", "show", "configs/quickstart.yaml"],
    'python -c "import torch"': ["-c", "import torch"],
}
REFERENCE = 'python -c "import torch"'


def _run(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False, timeout=300)
    return time.perf_counter() - start


def _imports_torch(args: list[str]) -> bool:
    result = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, check=False, timeout=300)
    return any(line.split("|")[-1].strip() == "torch" for line in result.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs per command (the median is printed)")
    args = parser.parse_args()

    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():
        _run(command)  # warm the file-system cache
    for _ in range(args.repeats):  # interleaved, so that load changes on the machine hit every command alike
        for name, command in COMMANDS.items():
            times[name].append(_run(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = medians[REFERENCE]
    width = max(map(len, COMMANDS))
    print(f"median of {args.repeats} runs each, fresh processes, {sys.executable}")
    print(f"{'command':<{width}}  {'median s':>8}  {'min s':>6}  {'x import torch':>14}  imports torch")
    for name, command in COMMANDS.items():
        print(f"{name:<{width}}  {medians[name]:8.3f}  {min(times[name]):6.3f}  {medians[name] / reference:14.2f}  "
              f"{'yes' if _imports_torch(command) else 'no'}")


if __name__ == "__main__":
    main()
