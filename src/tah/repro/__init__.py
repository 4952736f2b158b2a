"""``tah repro``: the studies that check the method end to end, one sub-package per study.

* :mod:`tah.repro.tiny`   - the paper's pipeline at laptop scale (word problems, ``tah repro tiny``)
* :mod:`tah.repro.twohop` - the depth-bound lookup study (``tah repro twohop``)

At this level only what both studies use:

* :mod:`tah.repro.jobs`   - the job runner: steps on single-threaded worker processes, with progress
* :mod:`tah.repro.stats`  - mean ± std and the exact McNemar test
* :mod:`tah.repro.plots`  - matplotlib on Agg, atomic PNG writes
* :mod:`tah.repro.export` - copies one seed's TaH checkpoint out (the bundled demo models)
* :mod:`tah.repro.widen`  - the width-matched Standard control (a function-preserving wider MLP)
"""
