"""mathloop: make math language models better by self-improvement (after the Qwen2.5-Math report)."""

__version__ = "0.1.0"
