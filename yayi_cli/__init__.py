"""yayi: check, fine-tune, chat with, quantize and evaluate YaYi language models."""

__version__ = "0.1.0"
