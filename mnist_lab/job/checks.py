"""A job's config checked before any data is loaded or any step taken: the values that types
alone cannot refuse, each named by its key."""

from __future__ import annotations

from omegaconf import OmegaConf

from mnist_lab.config.checks import check_finite, check_fraction, check_positive, parse_switch
from mnist_lab.data.dataset import dataset_facts
from mnist_lab.errors import ConfigError
from mnist_lab.train import evaluation


def check_config(cfg) -> None:
    """Refuse out-of-range values with the key named; types were already checked by the schema.

    The model's own rules live with its schema (`check(cfg)` of the dataclass its YAML names);
    the dataset's with its loader (`data.dataset`), whose facts bound the split sizes.
    """
    check_finite(cfg)
    data, trainer = cfg.data, cfg.trainer
    model_check = getattr(OmegaConf.get_type(cfg.model), "check", None)
    if model_check is not None:
        model_check(cfg)
    lr = cfg.optimizer.get("lr") if hasattr(cfg.optimizer, "get") else None
    check_positive("optimizer.lr", lr)
    check_positive("trainer.epochs", trainer.epochs)
    if trainer.log_interval < 0:
        raise ConfigError("trainer.log_interval", trainer.log_interval, "must be >= 0")
    for key in ("progress", "cuda_graph", "save_figures"):
        parse_switch(f"trainer.{key}", trainer[key])
    _check_regularisation(trainer, data)
    _check_objective(cfg.objective)
    facts = dataset_facts(data)
    if data.normalize not in facts.normalization:
        raise ConfigError(
            "data.normalize", data.normalize, f"one of {', '.join(facts.normalization)}"
        )
    train_size = facts.train_size
    if not 0 <= data.val_size < train_size:
        raise ConfigError("data.val_size", data.val_size, f"must be in [0, {train_size})")
    available = train_size - data.val_size
    if data.train_subset is not None and not 0 < data.train_subset <= available:
        raise ConfigError("data.train_subset", data.train_subset, f"must be in [1, {available}]")
    n_train = data.train_subset or available
    if not 0 < data.batch_size <= n_train:
        raise ConfigError(
            "batch_size", data.batch_size, f"must be in [1, {n_train}] (the training split's size)"
        )
    check_positive("data.eval_batch_size", data.eval_batch_size)


def _check_regularisation(trainer, data) -> None:
    """Label smoothing, max-norm and early stopping: ranges, and what early stopping needs."""
    check_fraction("trainer.label_smoothing", trainer.label_smoothing)
    if trainer.max_norm is not None:
        check_positive("trainer.max_norm", trainer.max_norm)
    stopping = trainer.early_stopping
    if stopping.min_delta < 0:
        raise ConfigError("trainer.early_stopping.min_delta", stopping.min_delta, "must be >= 0")
    if stopping.patience is None:
        return
    check_positive("trainer.early_stopping.patience", stopping.patience)
    if data.val_size == 0:
        raise ConfigError(
            "trainer.early_stopping.patience", stopping.patience, "needs data.val_size > 0"
        )
    if not trainer.eval_every_epoch:
        raise ConfigError(
            "trainer.early_stopping.patience",
            stopping.patience,
            "needs trainer.eval_every_epoch=true",
        )


def _check_objective(objective) -> None:
    """One direction per metric; the first a validation metric (it chooses the best epoch, so
    never the test set), the others per-epoch metrics or the model's `param_count`."""
    node = OmegaConf.to_container(objective, resolve=True, enum_to_str=True)
    metrics, directions = node["metrics"], node["directions"]
    if len(directions) != len(metrics) or not metrics:
        raise ConfigError(
            "objective.directions", directions, f"one per metric of objective.metrics {metrics}"
        )
    chooses = [k for k in evaluation.keys() if k.startswith("val/")]
    if metrics[0] not in chooses:
        raise ConfigError(
            "objective.metrics",
            metrics,
            f"the first chooses the best epoch: one of {', '.join(chooses)}",
        )
    allowed = ["train/loss", "train/acc", *chooses, "param_count"]
    for metric in metrics[1:]:
        if metric not in allowed:
            raise ConfigError("objective.metrics", metrics, f"each one of {', '.join(allowed)}")
