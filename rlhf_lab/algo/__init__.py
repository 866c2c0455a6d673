"""The algorithm: PPO's maths as pure tensor functions (ppo.py), the trick tables that choose them (tricks.py),
the rollout metrics (metrics.py). No device, rank or precision here.
"""
