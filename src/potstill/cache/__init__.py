"""The teacher cache: the teacher's top-k signal, paid for once and kept on disk."""
