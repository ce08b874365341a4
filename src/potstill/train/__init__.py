"""The training loop that distils a student (or trains the no-KD baseline)."""
