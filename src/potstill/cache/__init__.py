"""The teacher cache: the teacher's signal paid for once and kept on disk.

`teach` runs a live teacher over the planned blocks; `codec` packs each token's top-k ids
and log-probabilities (ANS-coded, under 100 bytes/token); `manifest` types
``manifest.json`` (format 2: a section per stored field); `store` writes shards atomically;
`reader` serves a finished cache as a teacher, a shard at a time.
"""
