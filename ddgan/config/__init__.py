"""The training configuration: the Config dataclass (fields.py), the presets (presets.py) and the checks
that refuse a config before any work starts (validation.py)."""

from ddgan.config.fields import (
    ARCHITECTURE_FIELDS,
    FIELD_ALIASES,
    GROUPS,
    NETWORK_FIELDS,
    Config,
    architecture_changes,
    check_known,
    replace,
    unknown_flag_message,
)
from ddgan.config.presets import LATENT_PRESET_AUTOENCODERS, PRESETS
from ddgan.config.validation import make_config, validate

__all__ = [
    "ARCHITECTURE_FIELDS", "FIELD_ALIASES", "GROUPS", "LATENT_PRESET_AUTOENCODERS", "NETWORK_FIELDS", "PRESETS",
    "Config", "architecture_changes", "check_known", "make_config", "replace", "unknown_flag_message", "validate",
]
