"""Teacher outputs as data: the teacher writes what a student later learns from.

`label` scores every label's full token sequence for each text (the shared prompt
prefix's key/value cache computed once and reused) into soft labels for a classifier
student (`store`: ``labels.parquet``); `generate` has the teacher (a local model or an
OpenAI-compatible endpoint) write responses to prompts (`generations`:
``generations.jsonl``, resumable and deduplicated).
"""
