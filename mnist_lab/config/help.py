"""The lines `python experiments/run.py --help` fills in (conf/hydra/help/lab.yaml): the config
groups Hydra finds, with their options, and the short knobs, each with its one line of help.

The groups and options come from Hydra's own config loader, so a new file in conf/ shows up
without an edit here; the internal `schema` group (the structured configs the YAML files extend)
is left out, and of Hydra's groups only those the template names are shown.
"""

from __future__ import annotations

import textwrap

from omegaconf import DictConfig, OmegaConf

from mnist_lab.config.vocabulary import KNOBS

HIDDEN_GROUPS = ("schema", "hydra")


def _options(group: str) -> list[str]:
    from hydra.core.global_hydra import GlobalHydra

    return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def _groups(parent: str = "") -> list[str]:
    """Every group with options under `parent`, nested ones included (hydra/sweeper/sampler)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    found = []
    for name in loader.list_groups(parent):
        group = f"{parent}/{name}" if parent else name
        if _options(group):
            found.append(group)
        found += _groups(group)
    return found


WIDTH = 100  # columns a line is wrapped at


def _lines(rows: list[tuple[str, str]]) -> str:
    """Two columns, the right one wrapped under itself."""
    width = max(len(left) for left, _ in rows) + 2
    wrapped = [
        textwrap.fill(
            right,
            WIDTH,
            initial_indent=f"  {left:<{width}}",
            subsequent_indent=" " * (width + 2),
            break_on_hyphens=False,
        )
        for left, right in rows
    ]
    return "\n".join(wrapped)


def _composed(root: DictConfig) -> bool:
    """Whether Hydra has finished composing. OmegaConf also resolves the template while Hydra
    merges its own config over it, before `hydra.runtime` exists: listing the groups there would
    cost every composition (two per job of a multirun) what a `--help` costs, for nothing."""
    return OmegaConf.select(root, "hydra.runtime.choices") is not None


def groups_help(*, _root_: DictConfig) -> str:
    """A line per group: what it picks, the option used now, and its options."""
    if not _composed(_root_):
        return ""
    help_cfg = _root_.hydra.help
    described = dict(help_cfg.groups)
    shown = [g for g in _groups() if g.split("/")[0] not in HIDDEN_GROUPS]
    shown += [g for g in described if g.startswith("hydra/")]
    choices = _root_.hydra.runtime.choices
    rows = []
    for group in shown:
        now = choices.get(group)
        what = described.get(group, "") + (f" (now {now})" if now is not None else "")
        rows.append((group, f"{what}: {', '.join(_options(group))}".lstrip(": ")))
    return _lines(rows)


def knobs_help(*, _root_: DictConfig) -> str:
    """One line per short knob: `name=value` as composed, and what it sets."""
    if not _composed(_root_):
        return ""
    return _lines([(f"{k.name}={_root_.get(k.name)}", k.help) for k in KNOBS])
