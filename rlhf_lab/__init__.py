"""rlhf-lab: PPO for RLHF with every stabilising trick a switch."""

__version__ = "0.1.0"
