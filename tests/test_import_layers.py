"""The core's subpackages import each other without cycles (module-level imports, parsed with ast)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core" / "src" / "cellssl"


def _module_level_edges(root: Path) -> dict[str, dict[str, list[str]]]:
    """``{subpackage: {imported subpackage: [files]}}`` for imports at module level (not under TYPE_CHECKING,
    not inside functions, which load lazily)."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        package = parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cellssl."):
                target = node.module.split(".")[1]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("cellssl.")]
                if not names:
                    continue
                target = names[0].split(".")[1]
            else:
                continue
            if target != package:
                edges[package][target].append(str(path.relative_to(root)))
    return edges


def _cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one subpackage (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_subpackages() -> None:
    edges = _module_level_edges(CORE)
    cycles = _cycles(edges)
    detail = {tuple(c): {f"{a} -> {b}": edges[a][b] for a in c for b in c if b in edges.get(a, {})} for c in cycles}
    assert cycles == [], f"import cycles between subpackages: {detail}"


def test_lower_layers_do_not_import_the_stages_or_the_registry() -> None:
    edges = _module_level_edges(CORE)
    for low in ("errors", "atomic", "data", "channels", "models", "objectives", "config", "distributed"):
        for high in ("pipeline", "plan", "launch", "cli", "zoo", "finetune", "report"):
            assert high not in edges.get(low, {}), (low, high, edges[low][high])
    assert "plugins" not in edges.get("config", {}), edges["config"]["plugins"]  # validation loads no registry
    assert "train" not in edges.get("objectives", {}), edges["objectives"]["train"]  # EMA lives with objectives
    assert "train" not in edges.get("eval", {}), edges["eval"]["train"]  # distributed helpers are not in train/


def _all_imports(root: Path, package: str) -> list[tuple[str, int, str]]:
    """``(file, line, imported subpackage)`` of every ``cellssl`` import in ``package``, functions included."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cellssl."):
                found.append((str(path.relative_to(root)), node.lineno, node.module.split(".")[1]))
    return found


def test_the_data_embed_and_model_layers_do_not_reach_up_even_lazily() -> None:
    # a function-level import escapes the cycle check but is still an arrow up the layers (looking a plugin up in
    # the registry lazily is allowed: data/download_cli.py finds a dataset's downloader that way)
    for low in ("data", "embed", "channels", "models", "objectives"):
        up = [hit for hit in _all_imports(CORE, low) if hit[2] in ("pipeline", "plan", "launch", "cli", "zoo",
                                                                   "finetune", "report")]
        assert up == [], up


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path: Path) -> None:
    for package, target in (("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "m.py").write_text(f"from cellssl.{target}.m import x\n")
    assert _cycles(_module_level_edges(tmp_path)) == [["a", "b", "c"]]
