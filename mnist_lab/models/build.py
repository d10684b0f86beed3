"""A model from its config node: built on a device, given the data's input and output sizes."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from mnist_lab.errors import ConfigError


def build_model(model_cfg, device: torch.device, in_features: int, out_features: int):
    """The configured model on `device`: whatever `model_cfg._target_` builds from its keys, for
    the dataset's input size (pixels of an image) and output size (classes)."""
    keys = OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)
    try:
        model = instantiate(keys, in_features=in_features, out_features=out_features)
    except Exception as e:  # an unknown class, or a key its signature does not take
        cause = e.__cause__ or e
        raise ConfigError("model", keys.get("_target_"), f"{cause}") from e
    return model.to(device)


def linear_weights(model) -> list[torch.Tensor]:
    """The weight matrix of every linear layer (rows: a unit's incoming weights), for max-norm."""
    if isinstance(model, nn.Module):
        return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    return [linear.weight for linear in model.linears]  # the scratch model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
