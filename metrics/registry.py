"""The metric families, in the order they run and their columns appear in ``metrics.parquet``.

Each module in ``MODULES`` registers exactly one family: its ``FAMILY``, a
``metrics.context.MetricFamily`` that declares the family's name, its level
(per story: columns of metrics.parquet; per setting: its own file), what it
needs (``Need.embedding``, ``Need.scorer``, ``Need.exemplars``) and its
``compute`` function. ``metrics.compute`` reads only these declarations: it
never names a family, and loads a model only when a selected family needs it.

Adding a family touches:

1. ``metrics/<family>.py``: the pure functions, a ``compute`` function and
   ``FAMILY = MetricFamily(name=MetricName.<family>, level=..., needs=..., compute=...)``;
2. this file: the module's name in ``MODULES`` (its place sets the column order);
3. its config: a member of ``metrics.config.MetricName`` (and, if the family
   has options, a dataclass and a ``MetricsConfig`` field there), and
   ``conf/metrics/default.yaml`` (the ``enabled`` list, its comment line,
   its options; ``conf/metrics/fast.yaml`` too if the family is cheap);
4. its tests, in ``tests/metrics/``.

``metrics/compute.py`` is not touched. ``register``/``unregister`` exist for
tests and for families defined outside this package.
"""

from __future__ import annotations

import importlib
from typing import Iterable

from metrics.config import MetricName
from metrics.context import MetricFamily

MODULES = ("perplexity", "sampler_diagnostics", "scorer", "similarity", "edit_distance", "projection", "diversity")

_FAMILIES: dict[str, MetricFamily] = {}


def register(family: MetricFamily) -> MetricFamily:
    """Add ``family`` after those registered; a name registered twice is an error."""
    if not isinstance(family, MetricFamily):
        raise TypeError(f"register takes a MetricFamily, got {type(family).__name__}")
    if family.name in _FAMILIES:
        raise ValueError(f"metric family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> MetricFamily:
    """Remove the family called ``name`` (and return it)."""
    name = str(getattr(name, "value", name))
    if name not in _FAMILIES:
        raise KeyError(f"no metric family {name!r} is registered")
    return _FAMILIES.pop(name)


def families() -> list[MetricFamily]:
    """Every registered family, in registration order."""
    return list(_FAMILIES.values())


def selected(names: Iterable[str]) -> list[MetricFamily]:
    """The families called ``names`` (say ``config.enabled``), in registration order."""
    wanted = {str(getattr(name, "value", name)) for name in names}
    unknown = sorted(wanted - set(_FAMILIES))
    if unknown:
        raise ValueError(f"metrics.enabled names {unknown}, which no registered family has; "
                         f"registered: {list(_FAMILIES)}")
    return [family for name, family in _FAMILIES.items() if name in wanted]


for _module in MODULES:
    register(importlib.import_module(f"metrics.{_module}").FAMILY)

if set(_FAMILIES) != {name.value for name in MetricName}:
    raise RuntimeError(f"metrics.config.MetricName {[n.value for n in MetricName]} and the registered families "
                       f"{list(_FAMILIES)} differ: every MetricName needs a module in MODULES, and back")
