"""Teacher outputs as data: the teacher writes what a student later learns from.

`label` scores every label's full token sequence for each text (the shared prompt
prefix's key/value cache computed once and reused) into soft labels for a classifier
student; generation of completions and traces will live beside it.
"""
