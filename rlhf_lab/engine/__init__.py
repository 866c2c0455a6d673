"""The compute engine: device, precision and ranks (runtime.py), the model roles and their packed forward
passes (roles.py, packing.py), loading and LoRA (models.py), rollout engines (rollout.py), data streams and
batches (data.py), progress of long loops (progress.py).
"""
