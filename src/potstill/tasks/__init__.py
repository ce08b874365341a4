"""Tasks: what is specific to one kind of distillation (batches' token counts, the
student's loss step, the task's quality metrics). `causal_lm` today; a classification
and a generation task sit beside it."""
