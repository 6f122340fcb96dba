"""LLM judges as raters: ``python -m analysis.judge`` rates stories on the survey's four criteria and
calibrates the judges against human ratings of the same stories (see ``__main__``)."""
