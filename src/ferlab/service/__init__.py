"""The run service: the machinery that ``ferlab run``, ``ferlab tune`` and the Python API share.

- ``session``: before any work and around it: dataset paths and output folders checked,
  threads set, the experiment's log file, its config and environment recorded;
- ``store``: every dataset loaded once per geometry (``DataStore``), all inputs checked up front;
- ``fitting``: the one way a pair is trained, or its completed run reused (``fit_or_reuse``);
- ``scoring``: planned evaluations and ensembles written to their planned folders;
- ``outputs``: per-dataset files (data JSON, split keys, class plots) and the leakage table.

The orchestrator (``ferlab.pipeline``) and the tuner (``ferlab.tuning``) are written in terms
of these; what a run plans lives in ``ferlab.record``.
"""
