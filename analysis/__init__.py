"""Analysis of an experiment directory: tidy/average tables, loss-score correlations, mask comparison, figures
and a Markdown/HTML report. Reads files only (results.parquet, ticket directories); never loads a model.

Modules: :mod:`analysis.tables`, :mod:`analysis.correlation`, :mod:`analysis.masks`, :mod:`analysis.figures`,
:mod:`analysis.report` (``python -m analysis.report EXP_DIR``).
"""
