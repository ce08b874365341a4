"""potstill: distill a large language model into a small one, and measure what it kept."""

__version__ = "0.1.0"
