"""Every short knob changes the run it is given to, on every preset, or the run is refused."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mnist_lab.config.knobs import check_knobs, unused_knobs
from mnist_lab.config.schema import REPO_ROOT
from mnist_lab.config.vocabulary import BY_NAME
from mnist_lab.errors import ConfigError
from mnist_lab.job.build import build_trainer

CONF = REPO_ROOT / "conf"
PRESETS = [
    [],
    *([f"model={p.stem}"] for p in sorted((CONF / "model").glob("*.yaml"))),
    *([f"experiment={p.stem}"] for p in sorted((CONF / "experiment").glob("*.yaml"))),
    *(["experiment=lab_grid", f"lab_grid={p.stem}"] for p in sorted((CONF / "lab_grid").glob("*.yaml"))),
]  # fmt: skip
# A value no preset uses for each knob.
NEW_VALUES = {"hidden": 48, "lr": 0.0123, "batch_size": 48, "epochs": 3, "seed": 7}
GROUPS = ("model", "optimizer", "data", "trainer", "scheduler")


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _groups(cfg) -> dict:
    return {g: OmegaConf.to_container(cfg[g], resolve=True, enum_to_str=True) for g in GROUPS}


def test_new_values_are_new_everywhere():
    for preset in PRESETS:
        cfg = _compose(preset)
        assert all(cfg[k] != v for k, v in NEW_VALUES.items()), preset


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: " ".join(p) or "default")
def test_each_knob_changes_what_is_built(preset):
    base = _compose(preset)
    assert unused_knobs(base) == []  # every preset lets every knob through
    for knob, value in NEW_VALUES.items():
        overrides = [*preset, f"{knob}={value}"]
        changed = _compose(overrides)
        check_knobs(changed, overrides)  # not refused
        assert _groups(changed) != _groups(base), f"{knob}={value} changed nothing with {preset}"


def test_hidden_sets_the_first_layer_of_the_multi_layer_presets():
    for preset, sizes in [
        ("sigmoid128x256_sgd_unshuffled", [512, 256]),
        ("deep64x3_adam_nll", [512, 512, 512]),
    ]:
        cfg = _compose([f"experiment={preset}", "hidden=512", "trainer.device=cpu"])
        assert list(cfg.model.hidden_sizes) == sizes
        model = build_trainer(cfg).learner.model
        first = next(m for m in model.modules() if hasattr(m, "out_features"))
        assert (first.in_features, first.out_features) == (784, 512)


@pytest.mark.parametrize(
    ("overrides", "knob", "instead"),
    [
        (["model.hidden_sizes=[64,64]", "hidden=512"], "hidden", "model.hidden_sizes"),
        (["optimizer.lr=0.1", "lr=0.5"], "lr", "optimizer.lr"),
        (["data.batch_size=64", "batch_size=128"], "batch_size", "data.batch_size"),
        (["trainer.epochs=2", "epochs=5"], "epochs", "trainer.epochs"),
        (["trainer.seed=1", "++seed=5"], "seed", "trainer.seed"),
        (["model=resmlp", "model.width=64", "hidden=512"], "hidden", "model.width"),
    ],
)
def test_a_knob_nothing_reads_is_refused(overrides, knob, instead):
    cfg = _compose(overrides)
    assert unused_knobs(cfg) == [knob]
    with pytest.raises(ConfigError, match=f"^{knob}=.*set {instead} instead$"):
        check_knobs(cfg, overrides)
    # the same config without the knob on the command line is fine: its key was set on purpose
    check_knobs(cfg, [o for o in overrides if not o.lstrip("+").startswith(f"{knob}=")])


def test_knobs_cover_the_schema():
    assert set(BY_NAME) == set(NEW_VALUES)


def test_dead_knob_on_the_command_line_is_one_line_exit_2(run_cli):
    proc = run_cli(["model.hidden_sizes=[64,64]", "hidden=512", "trainer.device=cpu"])
    assert proc.returncode == 2, proc.output
    assert "hidden=512 is not allowed: has no effect" in proc.output
    assert "Traceback" not in proc.output
    record = json.loads((proc.run_dir / "result.json").read_text())
    assert record["status"] == "failed" and record["refused"] is True
