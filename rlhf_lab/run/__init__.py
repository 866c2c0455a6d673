"""A run's orchestration: the config to a trainer (build.py), a run's lifecycle (train.py), local ranks
(launch.py), checkpoints, the run directory, signals, the W&B sink, the sweep summary.
"""
