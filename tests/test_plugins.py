"""The plugin system: registration, isolation of broken plugins, duplicates, unknown names, switches."""

from __future__ import annotations

import types
from dataclasses import dataclass

import pytest

from cellssl.errors import DuplicateNameError, UnknownNameError
from cellssl.plugins import hookimpl
from cellssl.plugins.manager import PluginLoadWarning, build_plugin_state
from cellssl.plugins.registry import Registrar, Registry


@dataclass
class _Params:
    size: int = 1


def _plugin(**hooks: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(**hooks)


def _dataset_plugin(name: str) -> types.SimpleNamespace:
    @hookimpl
    def cellssl_register_datasets(registry: Registrar) -> None:
        registry.add(name, lambda config: config, _Params, f"the {name} dataset")

    return _plugin(cellssl_register_datasets=cellssl_register_datasets)


def test_builtins_are_registered_through_the_hooks() -> None:
    state = build_plugin_state(load_entry_points=False)
    builtin = next(info for info in state.plugins if info.name == "builtin")
    assert builtin.error is None
    assert builtin.registered["dataset"] == ["synthetic_cells", "table"]
    assert set(builtin.registered["channel_strategy"]) == {"fixed", "bag_of_channels", "per_channel_concat"}
    assert {"vit_tiny", "vit_small", "vit_base", "vit_large", "resnet18"} <= set(builtin.registered["backbone"])
    assert "knn" in builtin.registered["evaluator"]
    entry = state.registries["dataset"].get("table")
    assert entry.distribution == "cellssl"
    assert entry.summary.startswith("metadata CSV")


def test_third_party_entries_record_their_distribution() -> None:
    state = build_plugin_state(extra_plugins=[("acme", "acme-cells", _dataset_plugin("acme"))],
                               load_entry_points=False)
    entry = state.registries["dataset"].get("acme")
    assert entry.distribution == "acme-cells"
    assert entry.factory(_Params(size=3)).size == 3


def test_duplicate_name_is_reported_with_both_distributions() -> None:
    with pytest.warns(PluginLoadWarning, match="second"):
        state = build_plugin_state(
            extra_plugins=[("first", "dist-one", _dataset_plugin("same")),
                           ("second", "dist-two", _dataset_plugin("same"))],
            load_entry_points=False,
        )
    failed = {info.name: info.error for info in state.errors}
    assert "second" in failed
    assert "'dist-one'" in failed["second"] and "'dist-two'" in failed["second"]
    assert state.registries["dataset"].get("same").distribution == "dist-one"


def test_registry_add_rejects_duplicates_directly() -> None:
    registry = Registry("dataset")
    Registrar(registry, "a").add("x", lambda c: c, _Params, "x")
    with pytest.raises(DuplicateNameError, match=r"dataset 'x' is registered twice: by distribution 'a' .* 'b'"):
        Registrar(registry, "b").add("x", lambda c: c, _Params, "x")


def test_broken_plugin_is_isolated_and_reported() -> None:
    @hookimpl
    def cellssl_register_datasets(registry: Registrar) -> None:
        raise RuntimeError("boom")

    with pytest.warns(PluginLoadWarning, match="broken.*boom"):
        state = build_plugin_state(
            extra_plugins=[("broken", "broken-dist", _plugin(cellssl_register_datasets=cellssl_register_datasets)),
                           ("fine", "fine-dist", _dataset_plugin("fine"))],
            load_entry_points=False,
        )
    assert [info.name for info in state.errors] == ["broken"]
    assert "RuntimeError: boom" in state.errors[0].error
    assert "fine" in state.registries["dataset"]
    assert "synthetic_cells" in state.registries["dataset"]


def test_misspelled_hook_is_reported_not_fatal() -> None:
    @hookimpl
    def cellssl_register_datasetz(registry: Registrar) -> None:  # misspelled on purpose
        raise AssertionError("never called")

    with pytest.warns(PluginLoadWarning, match="typo"):
        state = build_plugin_state(
            extra_plugins=[("typo", "typo-dist", _plugin(cellssl_register_datasetz=cellssl_register_datasetz))],
            load_entry_points=False,
        )
    assert state.errors[0].name == "typo"
    assert "unknown hook" in state.errors[0].error


def test_unknown_name_lists_available_and_suggests_closest() -> None:
    state = build_plugin_state(load_entry_points=False)
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'synthetic_cell'\. Did you mean 'synthetic_cells'\?"
                       r" Available dataset names: synthetic_cells, table\."):
        state.registries["dataset"].get("synthetic_cell")


def test_unknown_first_party_name_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from cellssl.plugins import registry as registry_module

    state = build_plugin_state(load_entry_points=False)
    monkeypatch.setattr(registry_module, "_is_installed", lambda distribution: False)
    with pytest.raises(UnknownNameError, match=r"provided by the distribution 'cellssl-bloodcells', which is not "
                                               r"installed: run `pip install cellssl-bloodcells`"):
        state.registries["dataset"].get("bloodcells")
    monkeypatch.setattr(registry_module, "_is_installed", lambda distribution: True)
    with pytest.raises(UnknownNameError, match=r"'cellssl-bloodcells', which is installed but not loaded"):
        state.registries["dataset"].get("bloodcells")


def test_disable_autoload_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLSSL_DISABLE_PLUGIN_AUTOLOAD", "1")
    state = build_plugin_state()
    assert [info.name for info in state.plugins] == ["builtin"]


def test_plugins_switch_selects_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLSSL_PLUGINS", "no-such-plugin")
    state = build_plugin_state()
    assert [info.name for info in state.plugins] == ["builtin"]


def test_registrar_validates_its_arguments() -> None:
    registrar = Registrar(Registry("evaluator"), "d")
    with pytest.raises(ValueError, match="lowercase identifier"):
        registrar.add("Bad-Name", lambda c: c, _Params, "x")
    with pytest.raises(TypeError, match="must be a dataclass"):
        registrar.add("ok", lambda c: c, dict, "x")


def test_every_hookspec_is_documented_and_typed() -> None:
    import inspect

    from cellssl.plugins import hookspecs
    from cellssl.plugins.manager import HOOK_BY_KIND

    specs = {name: f for name, f in vars(hookspecs).items() if name.startswith("cellssl_")}
    assert set(HOOK_BY_KIND.values()) <= set(specs)
    assert len(specs) == len(HOOK_BY_KIND) + 1  # + cellssl_cli_commands
    for name, spec in specs.items():
        assert spec.__doc__ and ":return:" in spec.__doc__, name
        if name in HOOK_BY_KIND.values():
            assert ":param registry:" in spec.__doc__, name
            assert inspect.signature(spec).parameters["registry"].annotation == "Registrar"


def test_plugin_cli_commands_are_collected_and_clashes_reported() -> None:
    from cellssl.plugins.registry import CliCommand

    def make(name: str, group: str | None = None) -> types.SimpleNamespace:
        @hookimpl
        def cellssl_cli_commands() -> list[CliCommand]:
            return [CliCommand(name, "does things", lambda parser: None, lambda args: 0, group)]

        return _plugin(cellssl_cli_commands=cellssl_cli_commands)

    with pytest.warns(PluginLoadWarning, match="command 'hello' is already provided by 'one-dist'"):
        state = build_plugin_state(
            extra_plugins=[("one", "one-dist", make("hello")), ("two", "two-dist", make("hello")),
                           ("three", "three-dist", make("download", group="tools")),
                           ("four", "four-dist", make("run"))],
            load_entry_points=False,
        )
    assert {"hello", "tools download"} <= set(state.commands)
    assert state.commands["tools download"][1] == "three-dist"
    assert {info.name for info in state.errors} == {"two", "four"}
