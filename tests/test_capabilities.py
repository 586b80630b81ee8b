"""Each algorithm declares what it can do in one frozen record, and the record agrees with the
methods it implements."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import CONFIGS
from hydra.utils import get_class

from metarun.algorithms.base import Algorithm, Capabilities

ALGORITHMS = sorted(  # the algo configs that name a class (the others extend one of these)
    {
        config["_target_"]
        for config in (yaml.safe_load(p.read_text()) for p in (CONFIGS / "algo").glob("*.yaml"))
        if "_target_" in config
    }
)


@pytest.mark.parametrize("target", ALGORITHMS)
def test_the_record_agrees_with_the_methods(target):
    cls = get_class(target)
    declared = cls.capabilities
    assert declared.predicts_distribution == (cls.gaussian is not Algorithm.gaussian)
    assert (declared.learns_from == "environments") == hasattr(cls, "objective")


def test_the_record_is_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Capabilities().compiles = True
    with pytest.raises(ValueError, match="learns_from='graphs'"):
        Capabilities(learns_from="graphs")
