"""Reads an experiment folder back as its recorded plan describes it: ``load_record`` gives an
``ExperimentRecord``, the plan, the status of every pair and the planned evaluations whose
``metrics.json`` carries the planned key.

Nothing here computes a statistic or formats a table (``ferlab.evaluation.analysis`` and
``ferlab.reporting`` do), and nothing globs for results: an evaluation counts only when
``plan.json`` names it and its ``metrics.json`` carries the planned key
(``ferlab.record.planned_metrics``); statuses come from ``status.json`` and training facts from
the planned run folder's ``fit.json``. So a result left by another plan never shows as current.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferlab.layout import FIT_JSON, Layout, read_json
from ferlab.record import (
    PairStatus,
    Plan,
    PlannedPair,
    planned_metrics,
    read_plan,
    read_status,
)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header line, as dicts of strings."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@dataclass(frozen=True)
class Evaluation:
    """One planned evaluation with its numbers: a pair trained on ``train_dataset`` scored on
    ``test_dataset``."""

    train_dataset: str
    model: str
    test_dataset: str
    directory: Path
    data: dict[str, Any]
    relative: str = ""  # the folder as plan.json names it, relative to the experiment
    seed: int | None = None  # the planned pair's training seed (None: the experiment's one seed)

    def result(self, use_tta: bool) -> dict[str, Any] | None:
        """The TTA block when asked for and present, else the plain block."""
        if use_tta and self.data.get("tta"):
            return dict(self.data["tta"])
        plain = self.data.get("plain")
        return dict(plain) if plain else None


@dataclass
class ExperimentRecord:
    """An experiment folder as its plan describes it, with the results that match the plan."""

    layout: Layout
    plan: Plan
    status: dict[tuple[str, str, int | None], PairStatus]  # (dataset, model, seed)
    evaluations: list[Evaluation]
    # ferlab.evaluation.analysis.collect_comparisons' rows, kept so the summary and the report
    # bootstrap only once
    comparison_cache: list[dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def multi_seed(self) -> bool:
        """Every pair was planned with several training seeds."""
        return self.plan.multi_seed

    @property
    def first_seed(self) -> int | None:
        """The seed whose run gives the single-run numbers (None: the experiment's one seed)."""
        seeds = self.plan.seeds
        return seeds[0] if seeds else None

    def pair_status(self, pair: PlannedPair) -> PairStatus:
        return self.status.get(
            (pair.dataset, pair.model, pair.seed),
            PairStatus(pair.dataset, pair.model, run_dir=pair.run_dir, seed=pair.seed),
        )

    def evaluation(
        self, dataset: str, model: str, test: str, seed: int | None = None
    ) -> Evaluation | None:
        """The pair's evaluation on ``test`` (of ``seed``; None: of the first seed)."""
        want = (dataset, model, test, self.first_seed if seed is None else seed)
        for e in self.evaluations:
            if (e.train_dataset, e.model, e.test_dataset, e.seed) == want:
                return e
        return None

    def evaluations_of(self, dataset: str, model: str, seed: int | None = None) -> list[Evaluation]:
        """The pair's evaluations (of ``seed``; None: of the first seed)."""
        want = (dataset, model, self.first_seed if seed is None else seed)
        return [e for e in self.evaluations if (e.train_dataset, e.model, e.seed) == want]

    def first_seed_evaluations(self) -> list[Evaluation]:
        """The evaluations of the first seed (all of them with one seed)."""
        return [e for e in self.evaluations if e.seed == self.first_seed]

    def pair_groups(self) -> list[list[PlannedPair]]:
        """The planned pairs per (dataset, model), one per seed, in plan order."""
        groups: dict[tuple[str, str], list[PlannedPair]] = {}
        for p in self.plan.pairs:
            groups.setdefault((p.dataset, p.model), []).append(p)
        return list(groups.values())


def load_record(exp_dir: Path | Layout) -> ExperimentRecord:
    """Read ``plan.json``, ``status.json`` and every planned evaluation whose key matches.

    An evaluation of a pair that is not ``ok`` in this run's status is left out even if a
    file with the planned key exists (the pair failed after it was written).
    """
    layout = exp_dir if isinstance(exp_dir, Layout) else Layout(Path(exp_dir))
    plan = read_plan(layout)
    status = read_status(layout)
    evaluations = []
    for pair in plan.pairs:
        st = status.get((pair.dataset, pair.model, pair.seed))
        if st is None or not st.ok:
            continue
        failed = {e.test for e in st.evals if e.status == "failed"}
        for planned in pair.evals:
            if planned.test in failed:
                continue
            data = planned_metrics(layout, planned)
            if data is not None:
                evaluations.append(
                    Evaluation(
                        pair.dataset,
                        pair.model,
                        planned.test,
                        layout.resolve(planned.dir),
                        data,
                        planned.dir,
                        pair.seed,
                    )
                )
    return ExperimentRecord(layout, plan, status, evaluations)


def fit_summary(layout: Layout, pair: PlannedPair) -> dict[str, Any] | None:
    """The planned run folder's ``fit.json`` (None for ensembles and runs not finished)."""
    if not pair.run_dir:
        return None
    path = layout.resolve(pair.run_dir) / FIT_JSON
    return read_json(path) if path.is_file() else None
