"""``ferlab tune``: hyperparameter search with Optuna over the experiment file's ``tune:`` space.

Each trial samples the space (dotted config paths, as ``--set``), applies the values to the
experiment and trains the tuned (dataset, model) pair exactly as ``ferlab run`` would: the same
datasets (decode-once cache), the same run key and run folder, so a trial whose parameters
match a finished run returns at once, and ``ferlab run tune/best.yaml`` reuses the best
trial's weights. The objective is the best validation value of ``tune.metric`` in the run's
history; the test split is never read here (validation chooses; test is read once, by
``ferlab run``). Every epoch's validation value goes to the pruner through ``PruneOnVal``.

The study lives in ``tune/journal.log`` (Optuna's ``JournalStorage``, file backend), which
several workers on one machine or a shared file system can use at once; ``storage`` takes any
RDB URL (``sqlite:///...``, ``postgresql+psycopg://...``) for workers on many machines.
Rerunning continues the study up to ``trials`` finished trials (complete, pruned or failed).

Workers coordinate through the study: a short lock file (``tune/.ask.lock``) is held from "is
there room for another trial" to "the trial exists", so workers on one file system together
run exactly ``trials`` trials; each trial's sampler is seeded by the experiment seed and the
trial number, so workers started at the same moment draw different values and a study run
twice draws the same ones; a worker locks only the run folder it trains (``record.run_lock``),
and one that samples a run another worker is training waits and reuses it. A worker that dies
mid-trial (a kill -9, a lost machine) leaves a RUNNING trial: the next worker fails it (at once
when its process is gone from this host; after ``HEARTBEAT_GRACE_S`` without a heartbeat
otherwise; RDB storages also use Optuna's own heartbeat) and, with ``retries``, enqueues the
same parameters again; a failed trial that was retried does not count towards ``trials``.

Outputs (``ferlab.layout``): ``tune/trials.csv``, ``tune/best.yaml``, ``tune/history.png``,
``tune/intermediate.png`` and, when Optuna can compute them, ``tune/importances.json/.png``.
"""

from ferlab.tuning.outputs import TuneResult
from ferlab.tuning.search import tune

__all__ = ["TuneResult", "tune"]
