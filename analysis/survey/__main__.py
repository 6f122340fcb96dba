r"""Command line: ``python -m analysis.survey export|import key=value ...``.

    python -m analysis.survey export run_dir=outputs/paper participants=36 stories_per_participant=5 \
        practice=2 seed=0 out_dir=outputs/paper/survey
    python -m analysis.survey import input=downloads/ out=ratings.csv \
        key=outputs/paper/survey/researcher/unblinding_key.csv
    python -m analysis.survey import input=survey_export.csv out=ratings.csv format=qualtrics
    python -m analysis.survey import input=ratings_de.csv out=ratings.csv delimiter=semicolon decimal=comma

The key=value arguments are Hydra overrides of conf/survey_export.yaml or
conf/survey_import.yaml, composed with Hydra's compose API against the typed
schemas of analysis/survey/config.py: a misspelt key or a wrong type fails
before any file is read, and nothing is written to a Hydra output folder.
"""

from __future__ import annotations

import logging
import sys

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from analysis.survey.config import ExportConfig, ImportConfig, register_configs
from experiments.errors import HarnessInputError
from experiments.paths import conf_dir

CONF_DIR = conf_dir()
CONFIG_NAMES = {"export": "survey_export", "import": "survey_import"}
USAGE = __doc__


def load_config(command: str, overrides: list[str]) -> ExportConfig | ImportConfig:
    """Compose the typed config of a subcommand from key=value overrides."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=f"survey_{command}"):
        composed = compose(config_name=CONFIG_NAMES[command], overrides=overrides)
    return OmegaConf.to_object(composed)


def explain(error: Exception, command: str) -> str:
    """Hydra's message, with its cause, and the allowed keys when a key is unknown."""
    message = str(error).split("\nTo append to your config")[0]
    if error.__cause__ is not None and str(error.__cause__) not in message:
        message += f": {error.__cause__}"
    if "Could not override" in message:
        schema = ExportConfig if command == "export" else ImportConfig
        message += f" (unknown key; allowed: {', '.join(schema.__dataclass_fields__)})"
    return message


def run(argv: list[str]) -> int:
    if not argv or argv[0] not in CONFIG_NAMES:
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, overrides = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        config = load_config(command, overrides)
        if command == "export":
            from analysis.survey.export import export_survey

            result = export_survey(config)
            balance = result.summary["balance"]
            print(f"survey {result.survey.survey_id}: {config.participants} packets of "
                  f"{config.stories_per_participant} stories from {balance['stories']} stories in "
                  f"{balance['settings']} settings")
            for kind in ("ratings_per_story", "ratings_per_setting", "ratings_per_setting_and_position"):
                print(f"  {kind.replace('_', ' ')}: {balance[kind]['min']} to {balance[kind]['max']}")
            for note in balance["notes"]:
                print(f"  note: {note}")
            for name, path in result.files.items():
                print(f"  wrote {path}")
        else:
            from analysis.survey.ingest import import_ratings

            result = import_ratings(config)
            ratings = result.ratings
            print(f"read {config.input} ({result.format.name}): {len(ratings)} ratings by "
                  f"{ratings['participant_id'].nunique()} participants of {ratings['story_id'].nunique()} stories; "
                  f"{len(result.exclusions)} row(s) excluded")
            print(f"  wrote {result.out}")
    except (HarnessInputError, HydraException, OmegaConfBaseException) as error:  # the survey's, the store's
        print(f"error: {explain(error, command)}", file=sys.stderr)
        return 2
    return 0


def main() -> None:
    """The console script ``harness-survey``: the same as ``python -m analysis.survey``."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
