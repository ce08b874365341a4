"""The label convention every layer shares."""

# A label that takes no loss (prompt tokens, padding): HF's and PyTorch's convention.
IGNORE_INDEX = -100
