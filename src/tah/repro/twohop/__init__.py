"""``tah repro twohop``: a depth-bound lookup task where extra depth on a few tokens should matter.

* :mod:`~tah.repro.twohop.config`  - the gate, the readout, every setting, where each job lives
* :mod:`~tah.repro.twohop.study`   - the order of the study and its job list
* :mod:`~tah.repro.twohop.jobs`    - one job: train one model (or TaH's two stages), evaluate it
* :mod:`~tah.repro.twohop.runs`    - the in-process training loop and evaluation of one model
* :mod:`~tah.repro.twohop.results` - per-seed rows, aggregates and paired tests from the jobs
* :mod:`~tah.repro.twohop.report`  - the results written as JSON, Markdown and plots
"""
