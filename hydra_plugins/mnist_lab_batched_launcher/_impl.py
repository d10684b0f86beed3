"""The batched launcher: compose every job, group those that can share a step, train each group.

Like Hydra's BasicLauncher, jobs run in the launching process, each composed by
`config_loader.load_sweep_config` with its `hydra.job.num`. Only the jobs of the project's own
task function (experiments/run.py's: `mnist_lab.job.is_project_task`) are stacked: jobs whose
configs give equal `mnist_lab.job.group_key`s form a group, split into stacks that fit the memory
(`mnist_lab.job.capacity`, `max_batch`); a stack of two or more is trained by
`mnist_lab.job.run_jobs`, the lifecycle a job run alone goes through too. Every other job (no
key, left alone by the split, or any job of another task function) runs exactly as with the basic
launcher: Hydra's `run_job` calls the task function it was given.

A member of a stack is still a full Hydra job. `_MemberJob` does for it what `run_job` does around
a task function -- output directory, `.hydra/` files, `on_job_start`/`on_job_end` callbacks,
`JobReturn` -- and gives `run_jobs` a context that makes it the current job (HydraConfig, log
file, `env_set`, working directory when `hydra.job.chdir`) whenever that member's code runs. Why
not `run_job` itself: it runs one task function to its end, and the members of a stack advance
together.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    env_override,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mnist_lab.job import ConfigError, Job, capacity, group_key, is_project_task, run_jobs

log = logging.getLogger(__name__)


def _task_config(config: DictConfig) -> DictConfig:
    """The job's config as its task function gets it: without the `hydra` node."""
    cfg = copy.deepcopy(config)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


class _MemberJob:
    """One job of a stack: its composed config, output folder and Hydra job context."""

    def __init__(self, config: DictConfig):
        self.config = config
        HydraConfig.instance().set_config(config)
        output_dir = os.path.join(
            str(OmegaConf.select(config, "hydra.sweep.dir")),
            str(OmegaConf.select(config, "hydra.sweep.subdir")),
        )
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        HydraConfig.instance().set_config(config)
        self.output_dir = Path(config.hydra.runtime.output_dir)
        self.cfg = _task_config(config)
        self.hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        self.chdir = bool(self.hydra_cfg.hydra.job.chdir)

    def save_configs(self) -> None:
        """`.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml`, as run_job writes them."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        subdir = self.config.hydra.output_subdir
        if subdir is None:
            return
        folder = self.output_dir / str(subdir)
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.cfg, folder / "config.yaml")
        OmegaConf.save(self.hydra_cfg, folder / "hydra.yaml")
        OmegaConf.save(self.config.hydra.overrides.task, folder / "overrides.yaml")

    @contextmanager
    def context(self) -> Iterator[None]:
        """This job as the current Hydra job: its config, log file, environment and folder."""
        previous, cwd = HydraConfig.instance().cfg, os.getcwd()
        HydraConfig.instance().set_config(self.config)
        configure_log(self.config.hydra.job_logging, self.config.hydra.verbose)
        try:
            if self.chdir:
                os.chdir(self.output_dir)
            with env_override(self.hydra_cfg.hydra.job.env_set):
                yield
        finally:
            for handler in logging.getLogger().handlers:
                handler.flush()
            # Back to the launcher's own logging: nothing else lands in this job's log file.
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            HydraConfig.instance().cfg = previous
            os.chdir(cwd)

    def job_return(self, outcome) -> JobReturn:
        ret = JobReturn()
        ret.cfg, ret.hydra_cfg = self.cfg, self.hydra_cfg
        ret.overrides = OmegaConf.to_container(self.config.hydra.overrides.task)
        ret.working_dir = str(self.output_dir) if self.chdir else os.getcwd()
        ret.return_value = outcome
        ret.status = JobStatus.FAILED if isinstance(outcome, BaseException) else JobStatus.COMPLETED
        ret.task_name = JobRuntime.instance().get("name")
        return ret


class BatchedLauncherImpl:
    def __init__(self, max_batch: int | None, memory_fraction: float) -> None:
        self.max_batch, self.memory_fraction = max_batch, memory_fraction
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.groups_run = 0

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        # Checked here, not in __init__: Hydra's instantiate would wrap the one-line error.
        max_batch, fraction = self.max_batch, self.memory_fraction
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise ConfigError("hydra.launcher.max_batch", max_batch, "null or an integer >= 1")
        if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ConfigError("hydra.launcher.memory_fraction", fraction, "in (0, 1]")
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _compose(self, overrides: Sequence[str], idx: int) -> DictConfig:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        return config

    def _key(self, config: DictConfig) -> str | None:
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)  # for ${hydra:...} in the job's values
        try:
            return group_key(_task_config(config))
        finally:
            HydraConfig.instance().cfg = previous

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = [
            self._compose(overrides, initial_job_idx + i)
            for i, overrides in enumerate(job_overrides)
        ]
        groups: dict[str, list[int]] = {}
        ours = is_project_task(self.task_function)  # any other is called once per job
        for i, config in enumerate(configs):
            key = self._key(config) if ours else None
            groups.setdefault(key if key is not None else f"alone {i}", []).append(i)
        stacks = [s for members in groups.values() for s in self._split(configs, members)]
        log.info(
            "Launching %d jobs: %d in %d stack(s), %d on their own",
            len(configs),
            sum(len(s) for s in stacks if len(s) > 1),
            sum(1 for s in stacks if len(s) > 1),
            sum(1 for s in stacks if len(s) == 1),
        )
        returns: list = [None] * len(configs)
        for members in sorted(stacks):  # in job order of each stack's first job
            for i, ret in zip(members, self._run(configs, members), strict=True):
                returns[i] = ret
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _split(self, configs, members: list[int]) -> list[list[int]]:
        if len(members) == 1:
            return [members]
        cap = capacity(_task_config(configs[members[0]]), self.memory_fraction, self.max_batch)
        return [members[i : i + cap] for i in range(0, len(members), cap)]

    def _run(self, configs, members: list[int]) -> list[JobReturn]:
        callbacks = self.hydra_context.callbacks
        if len(members) == 1:
            (i,) = members
            config = configs[i]
            log.info("\t#%d : %s", config.hydra.job.num, " ".join(self._shown(config)))
            return [
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            ]
        nums = [int(configs[i].hydra.job.num) for i in members]
        group = {"group": self.groups_run, "jobs": nums}
        self.groups_run += 1
        log.info(
            "stack %d of %d jobs: #%s", group["group"], len(members), ", #".join(map(str, nums))
        )
        jobs = [_MemberJob(configs[i]) for i in members]
        for job in jobs:
            log.info("\t#%d : %s", job.config.hydra.job.num, " ".join(self._shown(job.config)))
            job.save_configs()
            with job.context():
                callbacks.on_job_start(config=job.config, task_function=self.task_function)
        outcomes = run_jobs([Job(j.cfg, j.context) for j in jobs], group)
        returns = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            ret = job.job_return(outcome)
            with job.context():
                callbacks.on_job_end(config=job.config, job_return=ret)
            returns.append(ret)
        return returns

    @staticmethod
    def _shown(config: DictConfig) -> Sequence[str]:
        return filter_overrides(list(config.hydra.overrides.task))
