"""Training: one readable loop for any task (`loop`: AdamW, warm-up + cosine schedule,
exact gradient accumulation, clipping, precision), resumable checkpoints of the student
and any extra trained modules (`checkpoint`), and the recipe's `train` section."""
