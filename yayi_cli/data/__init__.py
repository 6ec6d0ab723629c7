"""Instruction data: streaming readers and the data sub-commands built on them."""
