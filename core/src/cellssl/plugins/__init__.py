"""The plugin system: hook specifications, typed registries and the lazily built plugin manager.

Public entry points:

- :func:`get_registry` returns the registry of one component kind (``"dataset"``, ``"channel_strategy"``,
  ``"backbone"``, ``"objective"``, ``"evaluator"``), loading plugins on first use.
- :func:`hookimpl` marks a plugin's hook implementations.
"""

from cellssl.plugins.hookspecs import hookimpl, hookspec
from cellssl.plugins.manager import (
    PluginInfo,
    PluginManagerState,
    get_plugin_state,
    get_registry,
    reset_plugin_state,
    use_plugin_state,
)
from cellssl.plugins.registry import COMPONENT_KINDS, Entry, Registrar, Registry

__all__ = [
    "COMPONENT_KINDS",
    "Entry",
    "PluginInfo",
    "PluginManagerState",
    "Registrar",
    "Registry",
    "get_plugin_state",
    "get_registry",
    "hookimpl",
    "hookspec",
    "reset_plugin_state",
    "use_plugin_state",
]
