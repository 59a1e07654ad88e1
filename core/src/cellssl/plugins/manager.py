"""Building the plugin manager and the registries, lazily, on first use.

Nothing happens at import time. :func:`get_plugin_state` builds one :class:`PluginManagerState` per
process: it registers the built-in plugin, loads the entry points of group ``cellssl`` (each in
isolation: a plugin that fails to import or to register is reported, not fatal), then calls every
registration hook once per plugin so each entry records the distribution that provides it.

Environment switches:

- ``CELLSSL_DISABLE_PLUGIN_AUTOLOAD=1``: load only the built-in plugin.
- ``CELLSSL_PLUGINS=a,b``: load only the entry points (or distributions) named ``a`` and ``b``.

Tests build isolated states with :func:`use_plugin_state`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as importlib_metadata
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from cellssl.plugins import hookspecs
from cellssl.plugins.registry import COMPONENT_KINDS, CliCommand, FailedPlugin, Registrar, Registry

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cellssl"
BUILTIN_DISTRIBUTION = "cellssl"

HOOK_BY_KIND: dict[str, str] = {
    "dataset": "cellssl_register_datasets",
    "channel_strategy": "cellssl_register_channel_strategies",
    "backbone": "cellssl_register_backbones",
    "objective": "cellssl_register_objectives",
    "evaluator": "cellssl_register_evaluators",
    "download": "cellssl_register_downloads",
    "model": "cellssl_register_models",
    "launcher": "cellssl_register_launchers",
}


RESERVED_COMMANDS = frozenset({"plugins", "config", "train", "embed", "eval", "run"})


class PluginLoadWarning(UserWarning):
    """Warned when an installed plugin fails to import or to register; the others still load."""


@dataclass
class PluginInfo:
    """What ``cellssl plugins`` shows about one plugin.

    :ivar name: the plugin's name (its entry-point name; ``builtin`` for the core's own).
    :ivar distribution: the distribution that provides it.
    :ivar version: that distribution's version.
    :ivar registered: component kind -> names it registered.
    :ivar error: the load or registration error, or ``None`` when the plugin works.
    """

    name: str
    distribution: str
    version: str
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class PluginManagerState:
    """A built plugin manager with its registries and the report of what was loaded."""

    manager: pluggy.PluginManager
    registries: dict[str, Registry]
    plugins: list[PluginInfo]
    commands: dict[str, tuple[CliCommand, str]] = field(default_factory=dict)

    @property
    def errors(self) -> list[PluginInfo]:
        """Plugins that failed to load or register."""
        return [info for info in self.plugins if info.error is not None]


def _distribution_version(distribution: str) -> str:
    try:
        return importlib_metadata.version(distribution)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _selected_entry_points(only: Sequence[str] | None) -> list[importlib_metadata.EntryPoint]:
    points = list(importlib_metadata.entry_points(group=ENTRY_POINT_GROUP))
    if only is None:
        return points
    wanted = set(only)
    chosen = []
    for point in points:
        dist_name = point.dist.name if point.dist is not None else ""
        if point.name in wanted or dist_name in wanted:
            chosen.append(point)
    return chosen


def build_plugin_state(
    extra_plugins: Sequence[tuple[str, str, Any]] = (),
    load_entry_points: bool | None = None,
    only: Sequence[str] | None = None,
) -> PluginManagerState:
    """Build a fresh plugin manager and registries.

    :param extra_plugins: ``(plugin name, distribution, module or object)`` triples registered after the
        built-ins, as if they came from entry points (used by tests and embedding applications).
    :param load_entry_points: load installed entry points; default: unless
        ``CELLSSL_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value.
    :param only: load only these entry-point or distribution names; default: ``CELLSSL_PLUGINS`` if set.
    :return: the state; plugins that failed are listed in ``state.errors``, warned about (one
        :class:`PluginLoadWarning` each) and named by the registries when a lookup misses a name they provide.
    """
    from cellssl.plugins import builtin

    if load_entry_points is None:
        load_entry_points = os.environ.get("CELLSSL_DISABLE_PLUGIN_AUTOLOAD", "").lower() not in {
            "1", "true", "yes", "on"}
    if only is None and os.environ.get("CELLSSL_PLUGINS"):
        only = [name.strip() for name in os.environ["CELLSSL_PLUGINS"].split(",") if name.strip()]

    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    plugins: list[PluginInfo] = []
    distribution_of: dict[str, str] = {}

    def register(name: str, distribution: str, plugin: Any) -> None:
        info = PluginInfo(name, distribution, _distribution_version(distribution))
        plugins.append(info)
        try:
            manager.register(plugin, name=name)
        except Exception as exc:  # a broken plugin must not take the others down
            info.error = f"{type(exc).__name__}: {exc}"
            return
        distribution_of[name] = distribution

    register("builtin", BUILTIN_DISTRIBUTION, builtin)
    if load_entry_points:
        for point in _selected_entry_points(only):
            distribution = point.dist.name if point.dist is not None else "unknown"
            try:
                module: ModuleType | Any = point.load()
            except Exception as exc:
                info = PluginInfo(point.name, distribution, _distribution_version(distribution))
                info.error = f"import of '{point.value}' failed: {type(exc).__name__}: {exc}"
                plugins.append(info)
                continue
            register(point.name, distribution, module)
    for name, distribution, plugin in extra_plugins:
        register(name, distribution, plugin)

    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        offender = getattr(exc, "plugin_name", None) or getattr(exc, "plugin", None)
        for info in plugins:
            if info.name == offender or manager.get_plugin(info.name) is offender:
                info.error = f"unknown hook: {exc}"
                manager.unregister(name=info.name)
                distribution_of.pop(info.name, None)
        manager.check_pending()

    registries = {kind: Registry(kind) for kind in COMPONENT_KINDS}
    info_by_name = {info.name: info for info in plugins}
    for kind, hook_name in HOOK_BY_KIND.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            info = info_by_name[impl.plugin_name]
            if info.error is not None:
                continue
            registrar = Registrar(registries[kind], distribution_of[impl.plugin_name])
            try:
                impl.function(registry=registrar)
            except Exception as exc:
                info.error = f"{hook_name} failed: {type(exc).__name__}: {exc}"
                _roll_back(registries, info, registrar)
                continue
            if registrar.added:
                info.registered[kind] = list(registrar.added)

    commands: dict[str, tuple[CliCommand, str]] = {}
    for impl in manager.hook.cellssl_cli_commands.get_hookimpls():
        info = info_by_name[impl.plugin_name]
        if info.error is not None:
            continue
        try:
            provided = list(impl.function())
            for command in provided:
                if command.full_name in commands or command.full_name in RESERVED_COMMANDS:
                    owner = commands[command.full_name][1] if command.full_name in commands else "cellssl"
                    raise ValueError(f"command '{command.full_name}' is already provided by '{owner}'")
            for command in provided:
                commands[command.full_name] = (command, info.distribution)
                info.registered.setdefault("command", []).append(command.full_name)
        except Exception as exc:
            info.error = f"cellssl_cli_commands failed: {type(exc).__name__}: {exc}"

    failed = [FailedPlugin(info.name, info.distribution, info.error) for info in plugins if info.error is not None]
    for registry in registries.values():
        registry.failed = failed
    for plugin in failed:  # once per build (the state is built once per process); the CLI logs it
        warnings.warn(f"cellssl plugin '{plugin.name}' ({plugin.distribution}) is disabled: {plugin.error}",
                      PluginLoadWarning, stacklevel=2)
    return PluginManagerState(manager, registries, plugins, commands)


def _roll_back(registries: dict[str, Registry], info: PluginInfo, failed: Registrar) -> None:
    """Remove every entry a failing plugin registered, so it is disabled as a whole."""
    for name in failed.added:
        registries[failed.kind].remove(name)
    for kind, names in info.registered.items():
        for name in names:
            registries[kind].remove(name)
    info.registered.clear()


_state: PluginManagerState | None = None


def get_plugin_state() -> PluginManagerState:
    """The process-wide plugin state, built on first call."""
    global _state
    if _state is None:
        _state = build_plugin_state()
    return _state


def reset_plugin_state() -> None:
    """Forget the process-wide state; the next :func:`get_plugin_state` rebuilds it."""
    global _state
    _state = None


@contextlib.contextmanager
def use_plugin_state(state: PluginManagerState) -> Iterator[PluginManagerState]:
    """Use ``state`` as the process-wide plugin state inside the ``with`` block (for tests)."""
    global _state
    previous = _state
    _state = state
    try:
        yield state
    finally:
        _state = previous


def get_registry(kind: str) -> Registry:
    """The registry of component ``kind`` (one of :data:`~cellssl.plugins.registry.COMPONENT_KINDS`)."""
    return get_plugin_state().registries[kind]
