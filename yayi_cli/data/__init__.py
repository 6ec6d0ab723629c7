"""Instruction data: streaming readers and the data sub-commands built on them."""

DEFAULT_SEED = 515
"""The upstream YaYi training default, used by `data split` and `train` alike."""
