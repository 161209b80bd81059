"""The numbers of an experiment's tables, computed from its record (``ferlab.record.reader``).

Every row here comes from an evaluation the experiment's ``plan.json`` names (an
``ExperimentRecord``); ``ferlab.reporting`` formats these rows and writes them, nothing here
formats or writes a file.

- ``collect_summary``: one row per planned (dataset, model), metrics on its own test set and
  training facts; ``collect_per_seed`` and ``collect_across_seeds``: every seed's numbers, and
  their mean and sample standard deviation across seeds (``seed_stats``);
- ``collect_cross_dataset``: the train x test matrix of a metric (means across seeds);
- ``collect_dropped_labels``: evaluations scored on a subset of classes;
- ``collect_comparisons``: paired comparisons of every two models trained on one dataset and
  scored on one test split, from the per-image predictions (``probs.npz``) of the same planned
  evaluations (``ferlab.evaluation.compare``); every verdict's p-value is also corrected with
  Holm's method over all the comparisons of the experiment.

With several training seeds (``seeds:``) the plan holds every pair once per seed. Then a summary
row is one (dataset, model): the mean and sample standard deviation across seeds of each metric
(``*_mean``, ``*_std``, ``n_seeds``) beside one run's numbers, bootstrap intervals and training
facts, those of the first seed (``seed``). The cross-dataset matrix holds means across seeds,
and a paired comparison has the first seed's interval and McNemar p, with the mean and std
across seeds of the accuracy difference (seed s of A against seed s of B) and a verdict from
every seed (``compare.across_seeds_test``).

A row's keys are the columns ``ferlab.reporting.tables`` writes (``SUMMARY_FIELDS``,
``SEED_FIELDS``, ``PER_SEED_FIELDS``, ``ACROSS_SEEDS_FIELDS``); a comparison's are
``COMPARISON_FIELDS`` (and ``COMPARISON_SEED_FIELDS``), here because they select its keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferlab.evaluation.compare import (
    ALPHA,
    across_seeds_test,
    compare_pairs,
    holm,
    mean_std,
    seed_comparisons,
    seed_verdict,
)
from ferlab.layout import META, PROBS, Layout, read_json
from ferlab.record import PlannedEval, PlannedPair, produced_by_text
from ferlab.record.reader import Evaluation, ExperimentRecord, fit_summary, load_record

# The metrics of every row (plain and with TTA), each with its 95% bootstrap interval.
METRIC_NAMES: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1")

# --------------------------------------------------------------------------- summary


def _metric_fields(block: Mapping[str, Any] | None, prefix: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    ci = (block or {}).get("ci") or {}
    for metric in METRIC_NAMES:
        row[f"{prefix}{metric}"] = (block or {}).get(metric)
        bounds = ci.get(metric) or [None, None]
        row[f"{prefix}{metric}_ci_low"], row[f"{prefix}{metric}_ci_high"] = bounds[0], bounds[1]
    row[f"{prefix}log_loss"] = (block or {}).get("log_loss")
    return row


def summary_row(record: ExperimentRecord, pair: PlannedPair) -> dict[str, Any]:
    """One summary row: status, own-test metrics (plain and TTA, with CIs) and training facts."""
    st = record.pair_status(pair)
    evaluation = record.evaluation(pair.dataset, pair.model, pair.dataset, pair.seed)
    fit = fit_summary(record.layout, pair) if st.ok else None
    data = evaluation.data if evaluation else {}
    plain = data.get("plain")
    tta = data.get("tta")
    return {
        "dataset": pair.dataset,
        "model": pair.model,
        "status": st.status,
        "error": st.error,
        "n_test": (plain or {}).get("n"),
        **_metric_fields(plain, ""),
        **_metric_fields(tta, "tta_"),
        "tta_views": data.get("tta_views"),
        "train_seconds": (fit or {}).get("train_seconds"),
        "epochs": (fit or {}).get("epochs_run"),
        "best_epoch": (fit or {}).get("best_epoch"),
        "stopped_early": (fit or {}).get("stopped_early"),
        "training_notes": (fit or {}).get("notes") or [],  # report only (not a CSV column)
        "params": _params(record.layout, pair, fit),
        "throughput_ips": data.get("throughput_ips"),
        "reused": st.status == "reused",
        "produced_by": produced_by_text(st.produced_by) if st.status == "reused" else None,
        "run_dir": pair.run_dir,
    }


def _params(layout: Layout, pair: PlannedPair, fit: Mapping[str, Any] | None) -> int | None:
    """The parameter count from fit.json, else from meta.json's ``extra`` block."""
    if fit and fit.get("params") is not None:
        return int(fit["params"])
    if not pair.run_dir or not (layout.resolve(pair.run_dir) / META).is_file():
        return None
    meta = read_json(layout.resolve(pair.run_dir) / META)
    extra = meta.get("extra") if isinstance(meta, dict) else None
    value = (extra or {}).get("params") if isinstance(extra, dict) else None
    return int(value) if value is not None else None


def seed_stats(first_seed: int | None, results: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """``SEED_FIELDS`` of one pair on one test set from ``(seed, metrics.json data or None)``
    per seed: the mean and sample std across the seeds with a result, and which they are."""
    scored = [(seed, data) for seed, data in results if data and data.get("plain")]
    out: dict[str, Any] = {
        "seed": first_seed,
        "n_seeds": len(scored),
        "seeds": [seed for seed, _ in scored],
    }
    for prefix, block in (("", "plain"), ("tta_", "tta")):
        for metric in METRIC_NAMES:
            values = [
                float(v)
                for _, data in scored
                if (v := (data.get(block) or {}).get(metric)) is not None
            ]
            out[f"{prefix}{metric}_mean"], out[f"{prefix}{metric}_std"] = mean_std(values)
    return out


def _combined_status(statuses: Sequence[str]) -> str:
    """One status for a pair trained with several seeds: theirs when they agree, else the
    first that needs attention (failed, skipped, pending), else ``trained`` or ``computed``."""
    distinct = list(dict.fromkeys(statuses))
    if len(distinct) == 1:
        return distinct[0]
    for status in ("failed", "skipped", "pending", "trained", "computed"):
        if status in distinct:
            return status
    return distinct[0]


def seed_summary_row(record: ExperimentRecord, pairs: Sequence[PlannedPair]) -> dict[str, Any]:
    """One summary row of a (dataset, model) trained with several seeds (``pairs``, one per
    seed): the first seed's row (one run's numbers, intervals and training facts) with the
    combined status, every seed's error, and ``SEED_FIELDS`` on its own test set."""
    first = pairs[0]
    row = summary_row(record, first)
    statuses = [record.pair_status(p) for p in pairs]
    row["status"] = _combined_status([st.status for st in statuses])
    errors = [
        f"seed {p.seed}: {st.error}" for p, st in zip(pairs, statuses, strict=True) if st.error
    ]
    row["error"] = "; ".join(errors) or None
    row["reused"] = all(st.status == "reused" for st in statuses)
    row["produced_by"] = produced_by_text(statuses[0].produced_by) if row["reused"] else None
    results = []
    for p in pairs:
        e = record.evaluation(p.dataset, p.model, p.dataset, p.seed)
        results.append((p.seed, e.data if e else None))
    row.update(seed_stats(first.seed, results))
    return row


def collect_summary(exp_dir: Path | ExperimentRecord) -> list[dict[str, Any]]:
    """One row per planned (dataset, model) pair, ensembles and failed pairs included, in the
    plan's order. Metrics are from the pair's own test set; a failed pair has its error and no
    metrics (an evaluation-only dataset has no own test: its models are scored in the matrix).
    Keys are ``SUMMARY_FIELDS``; missing values are None. With several training seeds, one row
    per (dataset, model) with ``SEED_FIELDS`` too (``seed_summary_row``).
    """
    record = exp_dir if isinstance(exp_dir, ExperimentRecord) else load_record(Path(exp_dir))
    if record.multi_seed:
        return [seed_summary_row(record, group) for group in record.pair_groups()]
    return [summary_row(record, p) for p in record.plan.pairs]


def _eval_fields(e: Evaluation | None) -> dict[str, Any]:
    data = e.data if e else {}
    plain, tta = data.get("plain"), data.get("tta")
    return {
        "n_test": (plain or {}).get("n"),
        **_metric_fields(plain, ""),
        **_metric_fields(tta, "tta_"),
        "tta_views": data.get("tta_views"),
    }


def collect_per_seed(exp_dir: Path | ExperimentRecord) -> list[dict[str, Any]]:
    """One row per planned (pair, seed, test set) in plan order (``PER_SEED_FIELDS``): every
    seed's own numbers with its bootstrap intervals; a failed seed's rows have no numbers."""
    record = exp_dir if isinstance(exp_dir, ExperimentRecord) else load_record(Path(exp_dir))
    rows = []
    for pair in record.plan.pairs:
        st = record.pair_status(pair)
        fit = fit_summary(record.layout, pair) if st.ok else None
        common = {
            "dataset": pair.dataset,
            "model": pair.model,
            "seed": pair.seed,
            "status": st.status,
            "train_seconds": (fit or {}).get("train_seconds"),
            "epochs": (fit or {}).get("epochs_run"),
            "best_epoch": (fit or {}).get("best_epoch"),
            "reused": st.status == "reused",
            "run_dir": pair.run_dir,
        }
        planned_evals: list[PlannedEval | None] = [*pair.evals] or [None]
        for planned in planned_evals:
            test = planned.test if planned else None
            e = record.evaluation(pair.dataset, pair.model, test, pair.seed) if test else None
            rows.append(
                {
                    **common,
                    "test_dataset": test,
                    **_eval_fields(e),
                    "eval_dir": planned.dir if planned else None,
                }
            )
    return rows


def collect_across_seeds(exp_dir: Path | ExperimentRecord) -> list[dict[str, Any]]:
    """One row per planned (dataset, model, test set) (``ACROSS_SEEDS_FIELDS``): the mean and
    std across seeds of every metric, and the first seed's numbers with their intervals."""
    record = exp_dir if isinstance(exp_dir, ExperimentRecord) else load_record(Path(exp_dir))
    rows = []
    for group in record.pair_groups():
        first = group[0]
        tests = list(dict.fromkeys(e.test for p in group for e in p.evals))
        for test in tests:
            per_seed = [(p, record.evaluation(p.dataset, p.model, test, p.seed)) for p in group]
            stats = seed_stats(first.seed, [(p.seed, e.data if e else None) for p, e in per_seed])
            rows.append(
                {
                    "dataset": first.dataset,
                    "model": first.model,
                    "test_dataset": test,
                    **stats,
                    **_eval_fields(per_seed[0][1]),
                }
            )
    return rows


# --------------------------------------------------------------------------- paired comparisons

# A comparison row's keys: the columns of comparisons.csv (beside summary.csv), in order. ``difference`` is accuracy A minus accuracy B (a
# fraction); ``b01``: images only B gets right, ``b10``: images only A gets right; ``variant_*``
# says which predictions were compared (``tta`` or ``plain``, the headline of the summary).
COMPARISON_FIELDS: tuple[str, ...] = (
    "dataset",
    "test_dataset",
    "model_a",
    "model_b",
    "variant_a",
    "variant_b",
    "n",
    "accuracy_a",
    "accuracy_b",
    "difference",
    "difference_ci_low",
    "difference_ci_high",
    "b01",
    "b10",
    "p_value",
    "verdict",
    "note",
    "p_holm",
    "holm",
)
# ``p_holm``: the verdict's p-value after Holm's correction over every comparison of the
# experiment that has one (``compare.holm``); ``holm``: True when the verdict's difference
# survives that correction (``p_holm`` at most ``compare.ALPHA``). Empty for a pair not compared.
# Several training seeds: the columns comparisons.csv gains. The row's other numbers
# (accuracies, interval, counts, ``p_value``) are one run's, the first seed's (``seed``);
# ``difference_mean``/``difference_std`` are the mean and sample std across the ``n_seeds``
# seeds ``seeds`` of the accuracy difference A - B, seed s of A against seed s of B. The
# verdict is then every seed's (``compare.across_seeds_test``): ``p_value_seeds`` =
# max(``p_seeds``, the t-test over the per-seed differences; ``p_images``, the largest per-seed
# McNemar p), and ``p_holm`` corrects ``p_value_seeds``.
COMPARISON_SEED_FIELDS: tuple[str, ...] = (
    "seed",
    "n_seeds",
    "seeds",
    "difference_mean",
    "difference_std",
    "p_seeds",
    "p_images",
    "p_value_seeds",
)
COMPARISON_SEED = 0  # the paired bootstrap's seed, so a report rebuilds the same intervals
DEFAULT_BOOTSTRAP = 1000  # resamples when the metrics do not record how many were used


@dataclass(frozen=True)
class Correctness:
    """The headline predictions of one evaluation, image by image."""

    keys: list[str]  # (M,) image keys of the scored images
    correct: Any  # (M,) bool numpy array: prediction equals the true class
    variant: str  # "tta" or "plain"


def headline_correctness(e: Evaluation) -> Correctness | str:
    """Right-or-wrong per image of the evaluation's headline predictions (TTA when its metrics
    have a TTA block, as in the summary), read from its ``probs.npz``; or why they cannot be.

    The flags must reproduce the recorded accuracy and image count, so a ``probs.npz`` that
    does not belong to the planned ``metrics.json`` is never compared.
    """
    from ferlab.evaluation.evaluate import load_result  # lazy: torch

    # Named inside the experiment folder: a moved or copied experiment gives the same report.
    shown = Path(e.relative or e.directory) / PROBS
    if not (e.directory / PROBS).is_file():
        return f"no per-image predictions ({shown}); rerun the evaluation"
    use_tta = bool(e.data.get("tta"))
    variant = "tta" if use_tta else "plain"
    try:
        result, keys = load_result(e.directory)
    except ValueError as err:
        return str(err)
    probs = result.probs_tta if use_tta else result.probs_plain
    if probs is None:
        return f"{shown} has no TTA probabilities although metrics.json has TTA"
    if probs.ndim != 2 or probs.shape[0] != result.y_true.shape[0]:
        return (
            f"{shown} is inconsistent: probabilities of shape {probs.shape} for "
            f"{result.y_true.shape[0]} labels; rerun the evaluation"
        )
    correct = probs.argmax(axis=1) == result.y_true  # (M,)
    block = e.result(use_tta) or {}
    n, accuracy = block.get("n"), block.get("accuracy")
    m = int(correct.shape[0])
    consistent = (
        len(keys) == result.kept_mask.shape[0]
        and int(result.kept_mask.sum()) == m
        and n == m
        and m > 0
        and accuracy is not None
        and abs(float(correct.mean()) - float(accuracy)) <= 1e-9
    )
    if not consistent:
        return (
            f"{shown} does not match its metrics.json ({m} scored images against "
            f"n={n}, accuracy {float(correct.mean()) if m else 0.0:.4f} against {accuracy}); "
            "rerun the evaluation"
        )
    kept = [k for k, keep in zip(keys, result.kept_mask.tolist(), strict=True) if keep]
    return Correctness(kept, correct, variant)


def _bootstrap_count(evaluations: Sequence[Evaluation]) -> int:
    counts = [
        int(block["bootstrap"])
        for e in evaluations
        if (block := e.result(bool(e.data.get("tta")))) and block.get("bootstrap") is not None
    ]
    return max(counts) if counts else DEFAULT_BOOTSTRAP


def _correctness(
    evaluations: Sequence[Evaluation],
) -> tuple[dict[str, tuple[list[str], Any]], dict[str, str], dict[str, str]]:
    """Per model: its headline flags ``(keys, correct)``, why it has none, and its variant."""
    correct: dict[str, tuple[list[str], Any]] = {}
    unavailable: dict[str, str] = {}
    variants: dict[str, str] = {}
    for e in evaluations:
        got = headline_correctness(e)
        if isinstance(got, str):
            unavailable[e.model] = got
        else:
            correct[e.model] = (got.keys, got.correct)
            variants[e.model] = got.variant
    return correct, unavailable, variants


def collect_comparisons(record: ExperimentRecord) -> list[dict[str, Any]]:
    """One row per unordered pair of planned models trained on the same dataset and scored on
    the same test split (keys ``COMPARISON_FIELDS``), own test split first, models in plan
    order. Only evaluations the record holds count (planned, of pairs that completed, with the
    planned key); a pair that cannot be compared (no per-image predictions, different test
    images) has a row with the reason in ``note`` and no numbers.

    With several training seeds a row holds the first seed's comparison (its paired interval
    and McNemar p), with ``COMPARISON_SEED_FIELDS``: the mean and std across seeds of the
    accuracy difference, seed s of A against seed s of B, and the verdict of every seed
    together (``compare.across_seeds_test``), not the first seed's alone.

    Every row with a verdict p-value gets ``p_holm`` and ``holm``: Holm's correction over all
    the comparisons of the experiment, the family a reader scans for a "better".
    """
    if record.comparison_cache is not None:
        return record.comparison_cache
    multi = record.multi_seed
    fields = COMPARISON_FIELDS + COMPARISON_SEED_FIELDS if multi else COMPARISON_FIELDS
    first_seed = record.first_seed
    by_seed: dict[tuple[str, str, int | None], list[Evaluation]] = {}
    for e in record.evaluations:
        by_seed.setdefault((e.train_dataset, e.test_dataset, e.seed), []).append(e)
    groups: dict[tuple[str, str], list[Evaluation]] = {}
    for e in record.evaluations:
        if e.seed == first_seed:
            groups.setdefault((e.train_dataset, e.test_dataset), []).append(e)
    test_order = {t: i for i, t in enumerate(record.plan.test_sets)}
    ordered = sorted(
        groups,
        key=lambda g: (
            record.plan.train_datasets.index(g[0]) if g[0] in record.plan.train_datasets else 0,
            g[1] != g[0],
            test_order.get(g[1], len(test_order)),
        ),
    )
    rows: list[dict[str, Any]] = []
    for dataset, test in ordered:
        evaluations = groups[(dataset, test)]
        if len(evaluations) < 2:
            continue
        correct, unavailable, variants = _correctness(evaluations)
        pairs = compare_pairs(
            correct,
            dataset=dataset,
            test=test,
            n_boot=_bootstrap_count(evaluations),
            seed=COMPARISON_SEED,
            unavailable=unavailable,
            order=[e.model for e in evaluations],
        )
        spread: dict[tuple[str, str], list[tuple[float, float]]] = {}
        used: dict[tuple[str, str], list[Any]] = {}
        if multi:
            for seed in record.plan.seeds:
                flags = (
                    correct
                    if seed == first_seed
                    else _correctness(by_seed.get((dataset, test, seed), []))[0]
                )
                for models, values in seed_comparisons([flags]).items():
                    spread.setdefault(models, []).extend(values)
                    used.setdefault(models, []).append(seed)
        for row in pairs:
            row["variant_a"] = variants.get(row["model_a"])
            row["variant_b"] = variants.get(row["model_b"])
            if multi:
                models = (row["model_a"], row["model_b"])
                values = spread.get(models, [])
                diffs = [d for d, _ in values]
                row["seed"] = first_seed
                row["n_seeds"] = len(values)
                row["seeds"] = used.get(models, [])
                row["difference_mean"], row["difference_std"] = mean_std(diffs)
                if row.get("note") is None and values:
                    test_ = across_seeds_test(diffs, [p for _, p in values])
                    row["p_seeds"], row["p_images"] = test_["p_seeds"], test_["p_images"]
                    row["p_value_seeds"] = test_["p_value"]
                    row["verdict"] = seed_verdict(
                        row["model_a"],
                        row["model_b"],
                        float(row["difference_mean"]),
                        test_["p_value"],
                        len(values),
                    )
            rows.append({k: row.get(k) for k in fields})
    tested = [r for r in rows if verdict_p(r) is not None]
    adjusted, survives = holm([float(verdict_p(r)) for r in tested])  # type: ignore[arg-type]
    for r, p_adj, ok in zip(tested, adjusted, survives, strict=True):
        r["p_holm"], r["holm"] = p_adj, ok
    for r in rows:  # the verdict's own p below ALPHA (before Holm's correction)
        p = verdict_p(r)
        r["significant"] = p is not None and p < ALPHA
    record.comparison_cache = rows
    return rows


def verdict_p(row: Mapping[str, Any]) -> float | None:
    """The p-value a comparison's verdict rests on: McNemar's (one seed) or the test across
    seeds (``p_value_seeds``, several); None for a pair not compared or not tested."""
    if row.get("note") not in (None, ""):
        return None
    value = row.get("p_value_seeds") if "n_seeds" in row else row.get("p_value")
    return None if value is None or value == "" else float(value)


# --------------------------------------------------------------------------- cross-dataset


@dataclass
class CrossDataset:
    """A train x test matrix of one metric.

    ``values`` maps (row name, test set) to a fraction; a row name is ``"<dataset> / <model>"``
    and ``rows`` gives the (dataset, model) behind each row name, in order. With several
    training seeds a value is the mean across the seeds with a result (``counts`` of them,
    ``seeds`` the plan's); with one seed ``seeds`` is empty.
    """

    metric: str
    use_tta: bool
    values: dict[tuple[str, str], float] = field(default_factory=dict)
    train_names: list[str] = field(default_factory=list)
    test_names: list[str] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)
    tta_used: bool = False  # at least one cell is a TTA result
    seeds: list[Any] = field(default_factory=list)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def fewer_seeds(self) -> bool:
        """Some cell averages fewer seeds than the plan has (a seed failed there)."""
        return any(n < len(self.seeds) for n in self.counts.values())

    def __iter__(self) -> Any:  # unpack as (values, train_names, test_names)
        return iter((self.values, self.train_names, self.test_names))


def row_name(dataset: str, model: str) -> str:
    """How a (trained dataset, model) pair is named in the cross-dataset matrix."""
    return f"{dataset} / {model}"


def collect_cross_dataset(
    exp_dir: Path | ExperimentRecord, metric: str = "accuracy", use_tta: bool = True
) -> CrossDataset:
    """The planned cross-dataset matrix of ``metric`` (TTA where measured): one row per planned
    pair that completed, one column per planned test set; a cell is blank unless its planned
    evaluation produced a result in this plan. With several training seeds a cell is the mean
    across the seeds whose evaluation produced a result."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRIC_NAMES)}")
    record = exp_dir if isinstance(exp_dir, ExperimentRecord) else load_record(Path(exp_dir))
    out = CrossDataset(metric=metric, use_tta=use_tta)
    out.rows = list(
        dict.fromkeys(
            (p.dataset, p.model) for p in record.plan.pairs if record.pair_status(p).ok and p.evals
        )
    )
    out.train_names = [row_name(d, m) for d, m in out.rows]
    out.test_names = record.plan.test_sets
    out.seeds = list(record.plan.seeds) if record.multi_seed else []
    cells: dict[tuple[str, str], list[float]] = {}
    for e in record.evaluations:
        block = e.result(use_tta)
        if block is None or block.get(metric) is None:
            continue
        cells.setdefault((row_name(e.train_dataset, e.model), e.test_dataset), []).append(
            float(block[metric])
        )
        out.tta_used = out.tta_used or (use_tta and bool(e.data.get("tta")))
    for cell, values in cells.items():
        mean = values[0] if len(values) == 1 else mean_std(values)[0]
        assert mean is not None
        out.values[cell] = mean
        out.counts[cell] = len(values)
    return out


def collect_dropped_labels(exp_dir: Path | ExperimentRecord) -> list[dict[str, Any]]:
    """Planned evaluations scored on a subset of classes: which labels were left out, how many
    images."""
    record = exp_dir if isinstance(exp_dir, ExperimentRecord) else load_record(Path(exp_dir))
    out = []
    for e in record.first_seed_evaluations():  # the labels, not the seed, decide what is left out
        dropped = list(e.data.get("dropped_labels") or [])
        if dropped:
            out.append(
                {
                    "train_dataset": e.train_dataset,
                    "model": e.model,
                    "test_dataset": e.test_dataset,
                    "dropped_labels": dropped,
                    "n_dropped_images": e.data.get("n_dropped_images"),
                    "labels": list(e.data.get("labels") or []),
                }
            )
    return out
