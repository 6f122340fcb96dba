"""Hydra's basic sweeper, plus a check of every job's config before any job runs.

The basic sweeper only checks that each job's config composes; a value out
of range (say ``sampling.temperature=0.5,-1``) would surface only when that
job starts, after earlier jobs had loaded a model and run. This sweeper calls
the app's own validator on every job of a batch first.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from hydra.utils import get_method
from omegaconf import OmegaConf, open_dict


@dataclass
class ValidatingSweeperConf:
    _target_: str = "hydra_plugins.harness_sweeper.validating_sweeper.ValidatingSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[dict] = None
    # Dotted path of a function taking a job's composed config (without the hydra node).
    validator: Optional[str] = None


ConfigStore.instance().store(group="hydra/sweeper", name="validating", node=ValidatingSweeperConf,
                             provider="creativity-harness")


class ValidatingSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict] = None,
                 validator: Optional[str] = None):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.validator = validator

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        super().validate_batch_is_legal(batch)
        if self.validator is None:
            return
        validate = get_method(self.validator)
        for overrides in batch:
            job_config = self.hydra_context.config_loader.load_sweep_config(
                master_config=self.config, sweep_overrides=list(overrides))
            with open_dict(job_config):
                del job_config["hydra"]
            OmegaConf.set_readonly(job_config, False)
            try:
                validate(job_config)
            except ValueError as error:
                # A Hydra error is reported as one clear line, not a traceback wall.
                raise ConfigCompositionException(
                    f"job with overrides {' '.join(overrides)}: {error}") from None
