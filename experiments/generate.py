"""Entry point of the generate stage: ``python -m experiments.generate [overrides]``.

Without ``-m``, a grid declared in ``hydra.sweeper.params`` (as the paper
experiment does) runs inside this one process, so the model loads once; keys
given on the command line win over the grid. With ``-m``, Hydra's sweeper
makes one job per setting, and every job appends to the same store.
"""

from __future__ import annotations

import itertools
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments.config import ConfigError, GenerateConfig, register_configs
from experiments.paths import conf_path
from experiments.run import run_generation, validate

log = logging.getLogger("experiments.generate")

register_configs()

EXIT_CONFIG_ERROR = 2
EXIT_INCOMPLETE = 3


class SweepIncomplete(CompactHydraException):
    """Raised by a job of a -m sweep that left stories ungenerated.

    An exception, not sys.exit: Hydra records the job as failed and runs the
    remaining jobs, then reports the first failure in one line and exits
    non-zero. (sys.exit in a job would end the whole sweep at once.)
    """


def grid_overrides(sweeper_params: dict[str, str], task_overrides: list[str]) -> list[list[str]]:
    """Every combination of the declared grid as override lists, minus keys set on the command line."""
    parser = OverridesParser.create()
    given = {override.get_key_element() for override in parser.parse_overrides(task_overrides)}
    axes = []
    for override in parser.parse_overrides([f"{key}={value}" for key, value in sweeper_params.items()]):
        key = override.get_key_element()
        if key in given:
            continue
        values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                  else [override.get_value_element_as_str()])
        axes.append([f"{key}={value}" for value in values])
    return [list(combination) for combination in itertools.product(*axes)] if axes else [[]]


def to_typed(cfg: DictConfig) -> GenerateConfig:
    """Build the typed config; range checks in the dataclasses run here."""
    return OmegaConf.to_object(cfg)


def validate_composed(cfg: DictConfig) -> None:
    """Everything that can be checked without a model: types, ranges, backend support."""
    validate(to_typed(cfg))


def job_configs(cfg: DictConfig) -> list[DictConfig]:
    """The configs of the settings this process must run."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN or not hydra_cfg.sweeper.get("params"):
        return [cfg]
    task = list(hydra_cfg.overrides.task)
    return [hydra.compose(config_name=hydra_cfg.job.config_name, overrides=task + combination)
            for combination in grid_overrides(dict(hydra_cfg.sweeper.params), task)]


def generate(cfg: DictConfig) -> int:
    configs = job_configs(cfg)
    typed = [to_typed(job) for job in configs]  # range checks; run_generation checks backend support
    summary = run_generation(typed, resolved_configs=[OmegaConf.to_yaml(job, resolve=True) for job in configs])
    log.info(
        "done: %d setting(s), %d stories requested, %d were already stored, %d generated "
        "(%d tokens in %.1f s, %.1f tokens/s) -> %s",
        summary.settings, summary.requested, summary.already_present, summary.generated, summary.tokens,
        summary.seconds, summary.tokens_per_second, ", ".join(f"{d}/stories.jsonl" for d in summary.out_dirs))
    if not summary.complete:
        log.error("the sweep is INCOMPLETE: %d stories failed after all retries (run the same command again "
                  "to retry them):\n%s", len(summary.failed),
                  "\n".join(f"  {f.request.story_id} (sample {f.request.sample_index}): {f.error}" for f in summary.failed))
        return EXIT_INCOMPLETE
    return 0


@hydra.main(version_base="1.3", config_path=conf_path(), config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        status = generate(cfg)
    except ConfigError as error:
        log.error("configuration error: %s", error)
        sys.exit(EXIT_CONFIG_ERROR)
    if status == EXIT_INCOMPLETE and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise SweepIncomplete("the sweep is INCOMPLETE: stories failed after all retries (listed in the jobs' logs); "
                              "run the same command again to retry them")
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
