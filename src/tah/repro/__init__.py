"""The laptop-scale reproduction of the paper's pipeline (``tah repro tiny``).

* :mod:`tah.repro.config`  - every setting, with the ``tiny`` and ``quick`` presets
* :mod:`tah.repro.methods` - the table's rows and where their models live (shared, one layer down)
* :mod:`tah.repro.tiny`    - the pipeline: data, labelled rows, the whole run
* :mod:`tah.repro.graph`   - the job graph of real ``tah`` steps
* :mod:`tah.repro.recipes` - the ``tah train`` recipes of each seed
* :mod:`tah.repro.jobs`    - runs the steps on single-threaded worker processes, with progress
* :mod:`tah.repro.widen`   - the width-matched Standard control (a function-preserving wider MLP)
* :mod:`tah.repro.decider_study` - decider precision / recall / AUC, variants, validation choice
* :mod:`tah.repro.token_accuracy` - next-token accuracy on hard / easy held-out tokens
* :mod:`tah.repro.stats`   - mean ± std and the exact McNemar test
* :mod:`tah.repro.report`, :mod:`tah.repro.tables`, :mod:`tah.repro.plots` - the report from a
  run folder: numbers (JSON), Markdown tables, plots
* :mod:`tah.repro.export`  - copies one seed's TaH checkpoint out (the bundled demo model)
"""
