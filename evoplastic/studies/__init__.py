"""Studies built on the library: they run experiments and measure, the library does not
depend on them.

* :mod:`~evoplastic.studies.compare`: outer loops side by side at one wall-clock budget
  (``evoplastic compare``);
* :mod:`~evoplastic.studies.selection_training`: training a learned selection policy on
  cheap problems (``evoplastic train-selection``);
* :mod:`~evoplastic.studies.selection_compare`: learned selection against evosax strategies
  (``evoplastic compare-selection``);
* :mod:`~evoplastic.studies.bench` and :mod:`~evoplastic.studies.bench_ray`:
  ``evoplastic bench`` (and ``--ray``).

Submodules are imported on demand (``from evoplastic.studies import compare``).
"""
