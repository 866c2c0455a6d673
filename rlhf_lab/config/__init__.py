"""The run's configuration: the schema (every default), the rules across its nodes, the checks of
paths and files before any model loads, where the config tree and the cache live. Imports no torch.
"""
