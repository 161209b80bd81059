"""Planned evaluations and ensembles, each written to the folder the plan names; a previous
result is reused only when it carries the planned key."""

from __future__ import annotations

import logging
from typing import Any

from ferlab.config import ExperimentConfig
from ferlab.data.base import LoadedDataset
from ferlab.layout import ENSEMBLE, METRICS, PROBS, Layout, write_json
from ferlab.provenance import stamp
from ferlab.record import EvalStatus, PairStatus, Plan, PlannedEval, PlannedPair, planned_metrics

log = logging.getLogger("ferlab")


def evaluate_planned(
    model: Any,
    meta: Any,
    test: LoadedDataset,
    planned: PlannedEval,
    layout: Layout,
    *,
    cfg: ExperimentConfig,
    ids: dict[str, Any],
    force: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Score a model on ``test``'s test split (plain and TTA) into the planned folder.

    Returns the metrics and whether they were reused: a previous result counts only when it
    carries the planned key (same weights, test images, settings and code) and its arrays exist.
    """
    from ferlab.evaluation import evaluate, write_predictions  # lazy: torch

    out_dir = layout.resolve(planned.dir)
    old = None if force else planned_metrics(layout, planned)
    if old is not None and (out_dir / PROBS).is_file():
        return old, True
    split = test.splits["test"]
    result = evaluate(
        model,
        meta,
        split,
        test.labels,
        tta=cfg.eval.tta if cfg.eval.tta.enabled else None,
        batch_size=cfg.eval.batch_size,
        bootstrap=cfg.eval.bootstrap,
        seed=cfg.seed,
    )
    metrics = {
        **ids,
        "test_dataset": test.name,
        "eval_key": planned.key,
        "produced_by": stamp("eval"),
        **result.metrics,
    }
    write_predictions(out_dir, split.keys, result)
    write_json(out_dir / METRICS, metrics)
    return metrics, False


def eval_failed(status: PairStatus, test: str, name: str, e: Exception) -> None:
    """Record and log one failed evaluation; the pair's other evaluations go on."""
    status.evals.append(EvalStatus(test, "failed", f"{type(e).__name__}: {e}"))
    log.error("[%s] on %s failed: %s", name, test, e)


def run_ensemble(
    pair: PlannedPair,
    status: PairStatus,
    plan: Plan,
    statuses: list[PairStatus],
    layout: Layout,
    cfg: ExperimentConfig,
) -> None:
    """Soft-vote the planned members' saved evaluations; every member must have succeeded.
    With several training seeds an ensemble combines the models of its own seed."""
    from ferlab.evaluation import ensemble_from_dirs  # lazy: torch

    name = pair.label
    mine = (pair.dataset, pair.seed)
    member_status = {s.model: s for s in statuses if (s.dataset, s.seed) == mine}
    broken = [m for m in pair.members if not member_status[m].ok]
    if broken:  # not a failure of its own: the planned ensemble needs every member
        status.status = "skipped"
        status.error = (
            f"member(s) {', '.join(broken)} failed; the ensemble needs all of {pair.members}"
        )
        log.warning("[%s] not built: %s", name, status.error)
        return
    plan_pairs = {p.model: p for p in plan.pairs if (p.dataset, p.seed) == mine}
    for planned in pair.evals:
        member_evals = {m: plan_pairs[m].eval_on(planned.test) for m in pair.members}
        missing = [
            m for m, e in member_evals.items() if e is None or planned_metrics(layout, e) is None
        ]
        if missing:
            status.evals.append(
                EvalStatus(planned.test, "failed", f"no current evaluation of {', '.join(missing)}")
            )
            continue
        old = planned_metrics(layout, planned)
        if old is not None:  # the same members' evaluations, the same settings
            status.evals.append(
                EvalStatus(planned.test, "reused", None, old.get("produced_by") or {})
            )
            continue
        try:
            ids: dict[str, Any] = {
                "train_dataset": pair.dataset,
                "model": ENSEMBLE,
                "test_dataset": planned.test,
                "eval_key": planned.key,
                "produced_by": stamp("eval"),
            }
            if pair.seed is not None:
                ids["seed"] = pair.seed
            ensemble_from_dirs(
                {m: layout.resolve(e.dir) for m, e in member_evals.items() if e},
                layout.resolve(planned.dir),
                ids=ids,
                bootstrap=cfg.eval.bootstrap,
                seed=cfg.seed,
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            eval_failed(status, planned.test, name, e)
            continue
        status.evals.append(EvalStatus(planned.test, "computed", None, stamp("eval")))
    failed = [e for e in status.evals if e.status == "failed"]
    if failed or not status.evals:
        status.status = "failed"
        status.error = "; ".join(f"{e.test}: {e.error}" for e in failed) or "nothing to ensemble"
        return
    if all(e.status == "reused" for e in status.evals):
        status.status, status.produced_by = "reused", status.evals[0].produced_by
    else:
        status.status = "computed"
    log.info("[%s] soft vote over %d models", name, len(pair.members))
