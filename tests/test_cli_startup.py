"""A fast, honest command line: no torch for --help / plugins / config show, failed plugins named once."""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from cellssl.errors import UnknownNameError
from cellssl.plugins import manager
from cellssl.plugins.manager import PluginLoadWarning, build_plugin_state, get_registry
from cellssl.plugins.registry import COMPONENT_KINDS, kind_title

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision")

PROBE = """
import contextlib, io, json, sys
from cellssl.cli import build_parser, main
with contextlib.redirect_stdout(io.StringIO()):
    {action}
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


def _heavy_modules_after(action: str) -> list[str]:
    code = PROBE.format(action=action, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != "CELLSSL_DISABLE_PLUGIN_AUTOLOAD"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("action", [
    "build_parser()",
    "main(['plugins'])",
    "main(['config', 'show', 'configs/quickstart.yaml'])",
    "from cellssl.plugins import get_registry; [get_registry(k).names() for k in ('dataset', 'backbone')]",
], ids=["parser", "plugins", "config-show", "registries"])
def test_startup_commands_import_no_torch(action: str) -> None:
    assert _heavy_modules_after(action) == []


def test_building_a_component_still_imports_its_module() -> None:
    """The lazy factories really build: a registered ViT is a torch module once asked for."""
    assert _heavy_modules_after(
        "from cellssl.config.validate import build_component; "
        "m = build_component({'name': 'vit_tiny', 'depth': 1, 'embed_dim': 16, 'num_heads': 2, 'patch_size': 8, "
        "'img_size': 16}, 'backbone', 'backbone', in_chans=2); assert m.embed_dim == 16"
    ) == ["torch"]


def test_help_lists_the_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "cellssl.cli", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "config" in result.stdout and "plugins" in result.stdout


def test_kind_headings_are_humanised(capsys: pytest.CaptureFixture[str]) -> None:
    assert [kind_title(k) for k in COMPONENT_KINDS] == [
        "datasets", "channel strategies", "backbones", "objectives", "evaluators", "downloads", "models", "launchers"]
    from cellssl.cli import main

    main(["plugins"])
    out = capsys.readouterr().out
    assert "\nchannel strategies:\n    bag_of_channels " in out
    assert "channel_strategys" not in out and "\nbackbones:\n" in out


# ----------------------------------------------------------------------------- a plugin that fails to load


def _fake_distribution(root: Path, dist: str, entry: str, module: str) -> None:
    """An installed distribution (``.dist-info`` on ``sys.path``) whose ``cellssl`` entry point is broken."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[cellssl]\n{entry} = {module}\n")
    (root / f"{module}.py").write_text("raise ImportError('needs libfoo 2.0, found 1.3')\n")


def _broken_entry_points(root: Path) -> list[importlib_metadata.EntryPoint]:
    return [point for dist in importlib_metadata.distributions(path=[str(root)]) for point in dist.entry_points
            if point.group == manager.ENTRY_POINT_GROUP]


def test_failed_plugin_is_warned_once_and_named_by_lookups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(tmp_path, "cellssl-hpa", "hpa", "cellssl_hpa_broken_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    points = _broken_entry_points(tmp_path)
    assert [p.dist.name for p in points] == ["cellssl-hpa"]
    monkeypatch.setattr(manager, "_selected_entry_points", lambda only: points)
    monkeypatch.setattr(manager, "_state", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            registry = get_registry("dataset")
            with pytest.raises(UnknownNameError) as err:
                registry.get("hpa_fov")
    assert [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)] == [
        "cellssl plugin 'hpa' (cellssl-hpa) is disabled: import of 'cellssl_hpa_broken_plugin' failed: "
        "ImportError: needs libfoo 2.0, found 1.3"]
    assert ("unknown dataset 'hpa_fov'. It is provided by plugin 'hpa' (distribution 'cellssl-hpa'), which failed "
            "to load: import of 'cellssl_hpa_broken_plugin' failed: ImportError: needs libfoo 2.0, found 1.3. Fix or "
            "reinstall that plugin") in str(err.value)
    assert "Did you mean" not in str(err.value)
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'tabel'\. Did you mean 'table'\?.*Plugins that "
                                               r"failed to load \(one of them may provide it\): 'hpa' \(cellssl-hpa\)"):
        registry.get("tabel")


def test_failed_third_party_plugin_is_named_for_its_own_name(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "acme-cells", "acme", "acme_cells_broken_plugin")
    sys.path.insert(0, str(tmp_path))
    try:
        points = _broken_entry_points(tmp_path)
        original = manager._selected_entry_points
        manager._selected_entry_points = lambda only: points  # type: ignore[assignment]
        try:
            with pytest.warns(PluginLoadWarning, match="acme"):
                state = build_plugin_state()
        finally:
            manager._selected_entry_points = original  # type: ignore[assignment]
    finally:
        sys.path.remove(str(tmp_path))
    assert [info.name for info in state.errors] == ["acme"]
    with pytest.raises(UnknownNameError, match=r"unknown evaluator 'acme'\. It is provided by plugin 'acme' "
                                               r"\(distribution 'acme-cells'\), which failed to load: import of "
                                               r"'acme_cells_broken_plugin' failed: ImportError"):
        state.registries["evaluator"].get("acme")


def test_cli_prints_a_failed_plugin_once_and_exits_2_for_its_names(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "acme-cells", "acme", "acme_cells_broken_plugin")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop("CELLSSL_DISABLE_PLUGIN_AUTOLOAD", None)
    listing = subprocess.run([sys.executable, "-m", "cellssl.cli", "plugins"], cwd=REPO, capture_output=True,
                             text=True, timeout=120, env=env)
    assert listing.returncode == 1  # a plugin is broken
    assert "acme  [acme-cells 0.1]  ERROR" in listing.stdout
    assert listing.stderr.count("cellssl plugin 'acme' (acme-cells) is disabled") == 1
    assert "warnings.warn" not in listing.stderr and "PluginLoadWarning" not in listing.stderr

    config = tmp_path / "acme.yaml"
    config.write_text("data: {name: acme}\nbackbone: {name: vit_tiny}\n")
    command = [sys.executable, "-m", "cellssl.cli", "embed", str(config), f"run.output_dir={tmp_path / 'r'}"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert ("unknown dataset 'acme'. It is provided by plugin 'acme' (distribution 'acme-cells'), which failed to "
            "load: import of 'acme_cells_broken_plugin' failed: ImportError: needs libfoo 2.0, found 1.3") in run.stderr
