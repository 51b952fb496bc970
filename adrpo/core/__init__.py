"""Pure ADRPO math: advantages, the adaptive coefficient, probability paths, losses, metrics.

Every function here takes tensors and keyword-only scalars, imports nothing but torch (numpy for
the Pareto analysis), and returns unreduced per-sample values plus detached diagnostics. Trainers
reduce and log.
"""
