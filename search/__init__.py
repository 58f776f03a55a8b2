"""Orchestration on Ray Tune: a validated space (``search_spaces.loader``) becomes Tune experiments, their results
one table. The only package besides ``trainables`` that imports Ray.

* :mod:`search.tune_space`: a space's sections -> Tune's param space, scheduler, searcher.
* :mod:`search.tuner`: a local Ray or a cluster, the trainable with its resources, the Tuner; fit / resume.
* :mod:`search.results`: one row per trial (the results schema), written as parquet + csv, and the summary.
* :mod:`search.proxy_search`: the two-stage proxy-guided search.
* :mod:`search.tickets`: ``export`` (a ticket as a Hugging Face model dir) and ``tickets`` (the store's table).
* :mod:`search.experiment`: the commands ``run_search.py`` calls.
"""

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INFRA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
