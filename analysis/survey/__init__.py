"""Human evaluation: blinded, balanced survey packets out; ratings back in.

``python -m analysis.survey export ...`` builds the survey from a run
(:func:`export_survey`); ``python -m analysis.survey import ...`` reads the
responses back into the long ratings table (:func:`import_ratings`). Every
survey format (how its files are written, recognised and read back) is one
module of :mod:`analysis.survey.formats`, listed in its ``FORMATS``; the
criteria asked about come from :mod:`analysis.criteria`.
"""

from analysis.survey.config import ExportConfig, ImportConfig, SurveyError, SurveyInputError

__all__ = ["ExportConfig", "ImportConfig", "SurveyError", "SurveyInputError", "export_survey", "import_ratings"]


def export_survey(config: ExportConfig):
    from analysis.survey.export import export_survey as run

    return run(config)


def import_ratings(config: ImportConfig):
    from analysis.survey.ingest import import_ratings as run

    return run(config)
