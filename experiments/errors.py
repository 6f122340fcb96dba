"""The base of every bad-input error of the harness, and the helpers that raise them.

Each stage has one error type for bad input (a config value, a file, a
table), a subclass of :class:`HarnessInputError`:

- generate: ``experiments.config.GenerateConfigError`` (alias ``ConfigError``);
- metrics: ``metrics.config.MetricsInputError``;
- analysis: ``analysis.config.AnalysisInputError``;
- survey: ``analysis.survey.config.SurveyInputError`` (alias ``SurveyError``);

and the story store, which every stage reads, raises
``experiments.store.StoreError``. ``except HarnessInputError`` catches any of
them; each is a ``ValueError``. :func:`check` (a range check) and :func:`member`
(a value of an enum) raise the stage's type with one message format.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


class HarnessInputError(ValueError):
    """Input the harness refuses: the message names the field, file, row or value and what is allowed."""


def check(condition: bool, field_name: str, value: Any, allowed: str,
          error: type[HarnessInputError] = HarnessInputError) -> None:
    """Raise ``error("<field_name>=<value!r> is not allowed: <allowed>")`` unless ``condition``."""
    if not condition:
        raise error(f"{field_name}={value!r} is not allowed: {allowed}")


def member(kind: type[E], value: Any, field_name: str, error: type[HarnessInputError] = HarnessInputError) -> E:
    """``value`` as a member of the enum ``kind`` (Hydra gives members; Python callers may give the plain
    value), else ``error("<field_name>=<value!r> is not allowed: one of <values>")``."""
    try:
        return kind(value)
    except ValueError:
        raise error(f"{field_name}={value!r} is not allowed: one of {', '.join(str(m.value) for m in kind)}") from None
