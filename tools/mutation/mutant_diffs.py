"""Print, as JSON, the changed lines of mutmut mutants: run in a mutmut workspace, names on stdin (JSON list).

One process for all the mutants of a module (``mutmut show`` starts a process per mutant, seconds each).
Output: ``{name: ["-old line", "+new line", ...]}`` (the ``-``/``+`` lines of the unified diff).
"""

from __future__ import annotations

import json
import sys

from mutmut.__main__ import find_mutant
from mutmut.mutation.diff_apply import get_diff_for_mutant


def changed_lines(name: str) -> list[str]:
    """The ``-``/``+`` lines of mutant ``name``'s diff against the original function."""
    diff = get_diff_for_mutant(name, path=find_mutant(name).path)
    return [line for line in diff.splitlines()
            if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))]


def main() -> int:
    names = json.load(sys.stdin)
    json.dump({name: changed_lines(name) for name in names}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
