"""ADRPO-GRPO on TRL's GRPOTrainer: the per-sample KL coefficient β0 − A (paper Eq. 7)."""
