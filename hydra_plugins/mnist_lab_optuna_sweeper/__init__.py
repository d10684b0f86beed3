"""Hydra sweeper that runs an Optuna study as a multirun (hydra-core 1.3, Optuna >= 4).

`config.py` registers `hydra/sweeper: optuna` and its `sampler`/`pruner` groups, `optuna_sweeper.py`
is the class Hydra instantiates, `_impl.py` (the sweeper) and the other underscore modules hold
everything that imports Optuna (Hydra skips underscore modules when it scans plugins, so runs that
do not sweep never import it).
"""
