"""Rewards: the reward protocol, validation of what a reward returns, built-in rewards."""
