"""Velocity-model adapters: each turns a network into the trainer's (x_t, t, cond) -> u_t."""
