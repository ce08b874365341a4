"""Model references, bundled models, and student construction."""
