"""Run configuration: YAML composed by plugin name, validated against each entry's dataclass."""

from cellssl.config.compose import load_run_config, save_resolved_config
from cellssl.config.validate import build_component, validate_block

__all__ = ["build_component", "load_run_config", "save_resolved_config", "validate_block"]
