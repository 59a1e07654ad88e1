"""``eval/`` is split by role: one module per registered evaluator, named after it; the shared engines under
``eval/engines/`` and the embedding I/O under ``embed/`` import no evaluator (parsed with ast, every import)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core" / "src" / "cellssl"
CONTRACT = {"__init__", "base", "classifier"}  # the evaluator contract and what the classifier evaluators share
COMPANION_SUFFIXES = ("_config", "_figures", "_targets")


def _registered_evaluators() -> dict[str, str]:
    """``{registered name: module of its factory}`` from ``cellssl_register_evaluators`` in plugins/builtin.py."""
    tree = ast.parse((CORE / "plugins" / "builtin.py").read_text(encoding="utf-8"))
    function = next(n for n in ast.walk(tree)
                    if isinstance(n, ast.FunctionDef) and n.name == "cellssl_register_evaluators")
    found = {}
    for call in ast.walk(function):
        if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "add":
            name, factory = call.args[0], call.args[1]
            assert isinstance(factory, ast.Call) and factory.func.id == "lazy", ast.dump(factory)
            found[name.value] = factory.args[0].value.partition(":")[0]
    return found


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
    return modules


def test_each_evaluator_module_is_named_after_its_registered_name() -> None:
    registered = _registered_evaluators()
    assert {"knn", "linear", "umap", "nsc_nscb", "logistic_regression"} <= set(registered)
    wrong = {name: module for name, module in registered.items() if module != f"cellssl.eval.{name}"}
    assert wrong == {}, f"evaluator modules not named after their registered names: {wrong}"


def test_eval_holds_only_evaluators_their_companions_and_the_contract() -> None:
    names = set(_registered_evaluators())
    stray = []
    for path in (CORE / "eval").glob("*.py"):
        stem = path.stem
        base = next((stem.removesuffix(s) for s in COMPANION_SUFFIXES if stem.endswith(s)), stem)
        if stem not in CONTRACT and base not in names:
            stray.append(path.name)
    assert stray == [], f"modules in eval/ that are neither an evaluator nor its companion (move engines to " \
                        f"eval/engines/): {stray}"


def test_engines_and_embedding_io_import_no_evaluator() -> None:
    offenders = {}
    for folder in (CORE / "eval" / "engines", CORE / "embed"):
        for path in folder.glob("*.py"):
            up = sorted(m for m in _imports(path)
                        if m.startswith("cellssl.eval") and not m.startswith("cellssl.eval.engines"))
            if up:
                offenders[str(path.relative_to(CORE))] = up
    assert offenders == {}, f"engines / embedding I/O reaching up into the evaluators: {offenders}"
