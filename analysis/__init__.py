"""Analysis of an experiment directory: tidy/average tables, loss-score correlations, mask comparison, figures
and a Markdown/HTML report. Reads files only (results.parquet, ticket directories); never loads a model.

Modules: :mod:`analysis.results_io` (loading, shared helpers), :mod:`analysis.tickets`, :mod:`analysis.tables`,
:mod:`analysis.columns`, :mod:`analysis.config_keys` (the searched values), :mod:`analysis.correlation`,
:mod:`analysis.masks`, :mod:`analysis.figure_style`, :mod:`analysis.figures`, :mod:`analysis.document`,
:mod:`analysis.report_sections`, :mod:`analysis.report_masks`, :mod:`analysis.report`
(``python -m analysis.report EXP_DIR [--exclude-stopped] [--best-by KEY] [--group-by KEY]``).
"""
