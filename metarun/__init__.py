"""metarun: one-command meta-learning experiments."""

from metarun.api import load

__all__ = ["load"]
