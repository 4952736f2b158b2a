"""``tah repro tiny``: the paper's pipeline at laptop scale, through the real ``tah`` commands.

* :mod:`~tah.repro.tiny.config`  - every setting, with the ``tiny`` and ``quick`` presets
* :mod:`~tah.repro.tiny.methods` - the table's rows and where their models live (one layer down)
* :mod:`~tah.repro.tiny.study`   - the pipeline: data, labelled rows, the whole run
* :mod:`~tah.repro.tiny.graph`   - the job graph of real ``tah`` steps
* :mod:`~tah.repro.tiny.recipes` - the ``tah train`` recipes of each seed
* :mod:`~tah.repro.tiny.decider_study` - decider precision / recall / AUC, variants, validation choice
* :mod:`~tah.repro.tiny.token_accuracy` - next-token accuracy on hard / easy held-out tokens
* :mod:`~tah.repro.tiny.report`, :mod:`~tah.repro.tiny.tables` - the report from a run folder:
  numbers (JSON), Markdown tables (plots in :mod:`tah.repro.plots`)
"""
