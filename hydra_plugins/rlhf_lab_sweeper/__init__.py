"""Hydra plugins of rlhf-lab: the `arms` sweeper (hydra/sweeper=arms)."""
