"""The laptop-scale reproduction of the paper's pipeline (``tah repro tiny``).

* :mod:`tah.repro.config`  - every setting, with the ``tiny`` and ``quick`` presets
* :mod:`tah.repro.tiny`    - the pipeline: data and the job graph of real ``tah`` steps
* :mod:`tah.repro.recipes` - the ``tah train`` recipes of each seed
* :mod:`tah.repro.jobs`    - runs the steps on single-threaded worker processes, with progress
* :mod:`tah.repro.token_accuracy` - next-token accuracy on hard / easy held-out tokens
* :mod:`tah.repro.report`  - the table (Markdown, JSON, plot) from a finished run folder
* :mod:`tah.repro.export`  - copies one seed's TaH checkpoint out (the bundled demo model)
"""
