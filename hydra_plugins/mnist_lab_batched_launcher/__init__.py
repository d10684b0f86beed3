"""Hydra launcher that trains compatible sweep jobs together as one stacked model.

`hydra/launcher=batched`: `config.py` registers its config, `batched_launcher.py` is the class
Hydra instantiates, `_impl.py` composes, groups and runs the jobs (Hydra skips underscore modules
when it scans plugins, so runs that do not use this launcher never import torch through it).
"""
