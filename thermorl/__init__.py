"""thermorl: temperature-aware RL post-training of language models on TRL."""

__version__ = "0.1.0"
