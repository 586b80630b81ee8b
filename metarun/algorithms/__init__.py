"""Meta-learning algorithms, one file each, all behind `metarun.algorithms.base.Algorithm`."""
