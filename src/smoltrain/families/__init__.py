"""Model families: how each kind of model plugs into the trainer, and the registry that turns raw configs
into typed ones.

The trainer only knows the :class:`~smoltrain.families.base.Family` interface; families are found
here by their ``arch.name`` and imported lazily, so importing the trainer imports no model file.

A config goes through three steps, each with one owner:

* :func:`load_config`: compose (``smoltrain.config``) and :func:`validate` with the arch class of the family
  that ``arch.name`` names (a saved run's config: ``smoltrain.runs.RunDir.load_config``);
* :func:`resolve`: the family's pure ``Family.resolve`` fills what the dataset decides (TRM's shapes, the
  LM's vocabulary) into a new config;
* ``family_class(name)(resolved_cfg, dist, device)`` builds the family, which only reads its config.
  :func:`build_family` does the last two for callers that do not write the config in between.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import smoltrain.config as config
from smoltrain.config import TrainConfig
from smoltrain.errors import ConfigError
from smoltrain.families.base import Family

if TYPE_CHECKING:
    import torch

    from smoltrain.runtime.distributed import DistEnv

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


def validate(raw: dict[str, Any]) -> TrainConfig:
    """A composed mapping as a typed config, its ``arch`` checked by the arch class ``arch.name`` selects."""
    arch = raw.get("arch")
    if not isinstance(arch, dict) or "name" not in arch:
        raise ConfigError(f"config needs arch.name (one of {', '.join(config.available_groups('arch'))})")
    return config.validate(raw, family_class(str(arch["name"])).config_class)


def load_config(recipe: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Recipe + overrides as a typed config (not yet resolved against the data)."""
    return validate(config.compose(recipe, overrides or []))


def _supporting_stage(cfg: TrainConfig) -> type[Family]:
    """The family class of ``cfg``, which must train ``cfg.stage``."""
    cls = family_class(cfg.arch.name)
    if cfg.stage not in cls.stages:
        others = sorted(name for name in FAMILIES if cfg.stage in family_class(name).stages)
        raise ConfigError(f"stage={cfg.stage} is not for arch={cfg.arch.name}, which trains only stage="
                          f"{' | '.join(cls.stages)}; stage={cfg.stage} is for arch={', '.join(others)}")
    return cls


def resolve(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with what its data decides filled in, by its family's pure ``resolve``; ``cfg`` is unchanged."""
    return _supporting_stage(cfg).resolve(cfg)


def build_family(cfg: TrainConfig, dist: DistEnv, device: torch.device) -> Family:
    """The family of ``cfg``, built from the resolved config (``family.cfg``)."""
    cls = _supporting_stage(cfg)
    return cls(cls.resolve(cfg), dist, device)


__all__ = ["FAMILIES", "Family", "build_family", "family_class", "load_config", "resolve",
           "validate"]
