"""Utilities every layer may use: the user-error type, atomic writes and checksums,
potstill's home folder, fetching files shipped in PyPI packages, logging and progress,
device and precision choice. Nothing here knows about models or distillation."""
