"""Model families: how each kind of model plugs into the trainer.

The trainer only knows the :class:`~smoltrain.families.base.Family` interface; families are found
here by their ``arch.name`` and imported lazily, so importing the trainer imports no model file.
"""

from __future__ import annotations

import importlib

from smoltrain.errors import ConfigError
from smoltrain.families.base import Family

# arch.name -> "module:Class"
FAMILIES: dict[str, str] = {
    "toy": "smoltrain.families.toy:ToyFamily",
    "trm": "smoltrain.families.trm:TRMFamily",
    "hrm": "smoltrain.families.trm:HRMFamily",
    "trm_singlez": "smoltrain.families.trm:TRMSingleZFamily",
    "lm": "smoltrain.families.lm:LMFamily",
}


def family_class(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise ConfigError(f"unknown arch.name '{name}'; choose one of: {', '.join(sorted(FAMILIES))}")
    module_name, _, class_name = FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["FAMILIES", "Family", "family_class"]
