"""Where the harness's Hydra configs are: the checkout's ``conf/``, or the copy installed with the package.

From a checkout (running in the repo, or an editable install) the configs are
the checkout's own ``conf/``, so an edit there takes effect at once. A regular
install (``pip install .``, a wheel) has no checkout: the wheel ships ``conf/``
as the package ``harness_conf`` (pyproject.toml maps it), found here through
the import system. The entry points pass the directory to Hydra as an absolute
path, so they work from any working directory and as console scripts.

Nothing in ``data/`` is read at run time (the example grammars are passed as
text), so only ``conf/`` is shipped.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

CONF_PACKAGE = "harness_conf"

# The folder holding experiments/, metrics/, conf/ and pyproject.toml when this runs from a checkout.
_CHECKOUT = Path(__file__).resolve().parents[1]


def checkout_conf() -> Path | None:
    """The checkout's conf/, or None when this module is not running from a checkout."""
    conf = _CHECKOUT / "conf"
    return conf if conf.is_dir() and (_CHECKOUT / "pyproject.toml").is_file() else None


@lru_cache(maxsize=1)
def conf_dir() -> Path:
    """The directory of the harness's Hydra configs (config.yaml, compute_metrics.yaml, ...)."""
    conf = checkout_conf()
    if conf is not None:
        return conf
    spec = importlib.util.find_spec(CONF_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "config.yaml").is_file():
            return Path(location).resolve()
    # Neither (a broken install): not an error at import time; Hydra names the missing folder when it runs.
    return _CHECKOUT / "conf"


def conf_path() -> str:
    """conf_dir() as the ``config_path`` of ``@hydra.main`` or ``initialize_config_dir`` (an absolute path)."""
    return str(conf_dir())
