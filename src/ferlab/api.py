"""What ``import ferlab`` gives: run an experiment, train, evaluate, load data and models.

The ``ferlab`` command is a thin layer over these functions; each has a runnable example
(the test suite runs them as doctests on synthetic data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ferlab.config import (
    ConfigError,
    DatasetConfig,
    ExperimentConfig,
    TrainConfig,
    TTAConfig,
    check_names,
    load_config,
    validate_config,
    with_overrides,
)
from ferlab.data.base import (
    ArraySplit,
    DatasetError,
    LoadedDataset,
    display_name,
    parse_spec,
    relative_key,
)
from ferlab.data.loading import load_dataset
from ferlab.defaults import CACHE_DIR, FACE_MARGIN, SPLIT_SEED, TEST_FRACTION, VAL_FRACTION
from ferlab.evaluation.analysis import METRIC_NAMES
from ferlab.layout import SPLITS, read_json
from ferlab.overrides import apply_overrides, parse_override
from ferlab.pipeline import ExperimentResult, run_experiment
from ferlab.provenance import stamp


def run(
    experiment: str | Path | ExperimentConfig | None = None,
    *,
    overrides: Sequence[str] = (),
    seeds: int | None = None,
    data: Sequence[str] = (),
    out: str | Path | None = None,
    force: bool = False,
    progress: bool | None = None,
    console: bool = True,
) -> ExperimentResult:
    """Run an experiment: a file, a shipped one (``default``, ``fer2013_cpu``, ``seed_gpu``), or
    an ``ExperimentConfig`` built in code (``overrides`` then apply to it).

    Every (dataset, model) pair is trained (or reused from the run cache), evaluated with and
    without TTA on its own test split and on the other datasets', then ensembles and the
    report. ``overrides`` are ``--set`` items. ``seeds=K`` (``ferlab run --seeds K``) trains
    every pair with the K seeds ``seed, seed + 1, ..., seed + K - 1`` (``seed`` after the
    overrides; it replaces the file's ``seeds:``), and the report gives mean and standard
    deviation across them (``with_seed_count``). ``data`` (``ferlab run --data NAME:PATH``)
    points the file's datasets at other folders (``with_data``).

    >>> import tempfile, ferlab
    >>> tmp = tempfile.mkdtemp()
    >>> small = "{n_train: 70, n_val: 35, n_test: 35}"
    >>> result = ferlab.run("default", out=tmp, progress=False, console=False, overrides=[
    ...     "train.epochs=1", "eval.bootstrap=0", f"data.cache_dir={tmp}/cache",
    ...     f"datasets.0.options={small}", f"datasets.1.options={small}",
    ...     "models=[{name: ferlab_vgg, kwargs: {width_mult: 0.25}}]"])
    >>> [(p.dataset, p.model, p.status) for p in result.pairs]
    [('synthetic-lab', 'ferlab_vgg', 'trained'), ('synthetic-wild', 'ferlab_vgg', 'trained')]
    >>> result.report.name
    'report.html'
    """
    if seeds is not None:
        check_seed_count(seeds, overrides)
    if isinstance(experiment, ExperimentConfig):
        cfg = with_overrides(experiment, list(overrides))
    else:
        cfg = load_config(experiment, list(overrides))
    if seeds is not None:
        cfg = with_seed_count(cfg, seeds)
    if data:
        cfg = with_data(cfg, data)
    return run_experiment(cfg, out=out, force=force, progress=progress, console=console)


def check_seed_count(count: Any, overrides: Sequence[str] = ()) -> int:
    """``count`` as the number of training seeds (``--seeds``), or a ``ConfigError`` that says
    what is wrong: not a whole number of at least 1, or given beside ``--set seeds=...``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(
            f"--seeds (seeds=) is the number of training seeds, a whole number of at least 1; "
            f"got {count!r}. --seeds 3 trains every pair with seeds seed, seed + 1, seed + 2; "
            "leave it out for one seed."
        )
    for item in overrides:
        if parse_override(item)[0] == ["seeds"]:
            raise ConfigError(
                f"--seeds {count} and --set {item} both set the training seeds; give one of "
                "them (--set seed=N picks the first seed of --seeds)."
            )
    return count


def with_seed_count(cfg: ExperimentConfig, count: int) -> ExperimentConfig:
    """``cfg`` with ``seeds`` = ``[seed, seed + 1, ..., seed + count - 1]`` (``--seeds K``)."""
    count = check_seed_count(count)
    return cfg.model_copy(update={"seeds": list(range(cfg.seed, cfg.seed + count))})


def with_data(cfg: ExperimentConfig, specs: Sequence[str]) -> ExperimentConfig:
    """``cfg`` with each ``NAME:PATH`` of ``specs`` as a dataset's path: the entry whose display
    name (its ``label:``, else its adapter name) is NAME gets PATH, keeping its options; a
    NAME the file does not list is added as a new training dataset.

    >>> from ferlab.config import load_config
    >>> cfg = with_data(load_config("fer2013_cpu"), ["fer2013:/data/fer2013"])
    >>> [(d.name, d.path) for d in cfg.datasets]
    [('fer2013', '/data/fer2013')]
    """
    datasets = list(cfg.datasets)
    for spec in specs:
        name, path = parse_spec(spec)
        hits = [i for i, d in enumerate(datasets) if d.display.lower() == name]
        if hits:
            datasets[hits[0]] = datasets[hits[0]].model_copy(update={"path": path})
        else:
            datasets.append(DatasetConfig(name=name, path=path))
    out = cfg.model_copy(update={"datasets": datasets})
    check_names(out)
    return out


def train_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword settings of ``train`` as experiment sections: each is a ``train:`` field
    (``epochs=2``, ``lr=1e-3``, ``batch_size=64``...), or ``seed``. Anything else is a
    ``ConfigError`` naming the fields there are."""
    fields = set(TrainConfig.model_fields)
    unknown = sorted(set(settings) - fields - {"seed"})
    if unknown:
        raise ConfigError(
            f"ferlab.train: unknown setting(s) {', '.join(unknown)}. Keyword settings are the "
            f"train: fields ({', '.join(sorted(fields))}) and seed; other sections go in "
            "overrides=['section.field=value'] or an experiment file (config=)."
        )
    raw: dict[str, Any] = {k: v for k, v in settings.items() if k == "seed"}
    train = {k: v for k, v in settings.items() if k != "seed"}
    if train:
        raw["train"] = train
    return raw


def train_config(
    data: str,
    model: str | None = None,
    *,
    config: str | Path | ExperimentConfig | None = None,
    overrides: Sequence[str] = (),
    **settings: Any,
) -> ExperimentConfig:
    """The experiment behind ``train``: one dataset (``NAME:PATH``), one model, no cross-eval.

    Settings other than the dataset and model come from ``config`` (an experiment file or
    object) or the defaults, then the keyword ``settings`` (``train:`` fields and ``seed``),
    then ``overrides``.
    """
    from ferlab.models import DEFAULT_CPU_MODEL  # lazy: torch

    name, path = parse_spec(data)
    base = (
        config if isinstance(config, ExperimentConfig) else load_config(config) if config else None
    )
    raw: dict[str, Any] = base.model_dump(mode="json") if base else {}
    for section, value in train_settings(settings).items():
        if isinstance(value, dict):
            raw.setdefault(section, {}).update(value)
        else:
            raw[section] = value
    raw.update(
        name="train_" + display_name(name, path).replace("-", "_"),
        datasets=[{"name": name, "path": path}],
        models=[{"name": model or DEFAULT_CPU_MODEL}],
    )
    raw.setdefault("eval", {})
    raw["eval"]["cross_dataset"] = False
    raw["eval"]["ensembles"] = False
    raw.setdefault("mega", {})["enabled"] = False
    return validate_config(apply_overrides(raw, list(overrides)))


def train(
    data: str,
    model: str | None = None,
    *,
    config: str | Path | ExperimentConfig | None = None,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    force: bool = False,
    progress: bool | None = None,
    console: bool = True,
    **settings: Any,
) -> ExperimentResult:
    """Train one model on one dataset (``NAME:PATH``) and evaluate it on its test split.

    Keyword ``settings`` are ``train:`` fields (``epochs=2``, ``lr=1e-3``, ``batch_size=64``)
    and ``seed``; other sections go in ``overrides`` (``["data.face_crop=haar"]``) or
    ``config``. Early stopping and the best epoch are chosen on the validation split; the
    weights are saved as safetensors + ``meta.json`` in ``result.run_dir`` (the file:
    ``result.weights``). The same call again returns at once from the run cache; a changed
    setting (or changed training code) retrains.

    >>> import tempfile, ferlab
    >>> tmp = tempfile.mkdtemp()
    >>> result = ferlab.train("synthetic:lab", "ferlab_vgg", epochs=1, out=tmp, progress=False,
    ...     console=False, overrides=["eval.bootstrap=0", f"data.cache_dir={tmp}/cache",
    ...     "datasets.0.options={n_train: 70, n_val: 35, n_test: 35}"])
    >>> result.pairs[0].status, result.weights.is_file(), result.weights.parent == result.run_dir
    ('trained', True, True)
    """
    cfg = train_config(data, model, config=config, overrides=overrides, **settings)
    return run_experiment(cfg, out=out, force=force, progress=progress, console=console)


@dataclass(frozen=True)
class EvaluateResult:
    """What ``evaluate`` measured: the plain or TTA predictions' metrics, as asked.

    ``per_class`` maps a label to its precision, recall, f1 and support; ``ci`` holds the
    bootstrap intervals; ``temperature``, ``ece`` and ``ece_calibrated`` the calibration (None
    for runs saved before it existed); ``split_settings`` how the split was drawn
    (``from_run``: the run's own); ``overlap`` the images the run trained or validated on.
    ``to_dict()`` is the ``ferlab evaluate --json`` object.
    """

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    n: int
    per_class: dict[str, dict[str, Any]]
    confusion_matrix: list[list[int]]
    labels: list[str]
    ci: dict[str, Any]
    dropped_labels: list[str]
    temperature: float | None
    ece: float | None
    ece_calibrated: float | None
    split: str
    split_settings: dict[str, Any]
    overlap: dict[str, Any]
    produced_by: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """The scores as ``ferlab evaluate`` prints them (percentages, per-class table)."""

        def pct(v: float | None) -> str:
            return "   n/a" if v is None else f"{100 * v:6.2f}%"

        source = "the run's split" if self.split_settings["from_run"] else "default split settings"
        lines = [f"  {self.split} split, n={self.n} ({source})"]
        lines += [f"  {k:18s} {pct(getattr(self, k))}" for k in METRIC_NAMES]
        if self.dropped_labels:
            lines.append(
                f"  left out (not shared by model and data): {', '.join(self.dropped_labels)}"
            )
        if self.overlap["n"]:
            lines.append(
                f"  WARNING: {self.overlap['n']} scored images were trained or validated on"
            )
        lines.append("  per class (precision / recall / F1 / support):")
        for label, pc in self.per_class.items():
            lines.append(
                f"    {label:9s} {100 * pc['precision']:6.1f} {100 * pc['recall']:6.1f} "
                f"{100 * pc['f1']:6.1f} {pc['support']:6d}"
            )
        return "\n".join(lines)


def _concat_splits(data: LoadedDataset) -> ArraySplit:
    """All of a dataset's splits as one (``--split all``)."""
    import numpy as np

    parts = list(data.splits.values())
    soft = None
    if all(p.soft is not None for p in parts):
        soft = np.concatenate([np.asarray(p.soft) for p in parts])
    return ArraySplit(
        images=np.concatenate([np.asarray(p.images) for p in parts]),
        labels=np.concatenate([np.asarray(p.labels) for p in parts]),
        keys=[k for p in parts for k in p.keys],
        soft=soft,
    )


def _trained_keys(run_dir: Path) -> set[str]:
    """Keys of the images a run trained and validated on (its ``splits.json``), or none."""
    path = run_dir / SPLITS
    if not path.is_file():
        return set()
    keys = read_json(path)
    return {k for s in ("train", "val") for k in keys.get(s, [])}


def evaluate(
    weights: str | Path,
    data: str,
    *,
    split: str = "test",
    tta: bool = False,
    tta_crops: int | None = None,
    options: dict[str, Any] | None = None,
    cache_dir: str | Path = CACHE_DIR,
    batch_size: int = 256,
    bootstrap: int = 1000,
    allow_overlap: bool = False,
) -> EvaluateResult:
    """Score saved weights (a run folder, or a ``weights.safetensors`` with its ``meta.json``)
    on a dataset's split (``"all"``: every image).

    When ``data`` names the dataset adapter the run was trained with, the run's split settings
    and adapter options (recorded in its metadata) are used, so ``"test"`` is the run's own
    held-out split. Scoring images the run trained or validated on is refused unless
    ``allow_overlap`` (the result then records how many). Classes the model and dataset do not
    share are left out and listed. ``tta`` also scores the views the run's evaluation used (its
    ``eval.tta``, recorded in ``meta.json``), as ``ferlab predict --tta`` runs them;
    ``tta_crops`` (0, 5, 10) asks for the flip and that many crops instead. Returns an
    ``EvaluateResult``.

    >>> import tempfile, ferlab
    >>> tmp = tempfile.mkdtemp()
    >>> result = ferlab.train("synthetic:lab", out=tmp, progress=False, console=False,
    ...     overrides=["train.epochs=1", "eval.bootstrap=0", f"data.cache_dir={tmp}/cache",
    ...     "datasets.0.options={n_train: 70, n_val: 35, n_test: 35}"])
    >>> m = ferlab.evaluate(result.run_dir, "synthetic:wild", tta=True, cache_dir=f"{tmp}/cache",
    ...     bootstrap=0)
    >>> m.n, m.split_settings["from_run"], 0.0 <= m.accuracy <= 1.0  # the run's n_test
    (35, True, True)
    """
    from ferlab.evaluation import evaluate as evaluate_model  # lazy: torch
    from ferlab.evaluation import flat_metrics  # lazy: torch
    from ferlab.evaluation.tta import recorded_tta  # lazy: torch
    from ferlab.models import load_model  # lazy: torch
    from ferlab.models.meta import resolve_weights  # lazy: ferlab.models imports torch

    weights = resolve_weights(weights)
    model, meta = load_model(weights)
    run_dir = weights if weights.is_dir() else weights.parent
    name, path = parse_spec(data)
    recorded = dict((meta.extra or {}).get("data") or {})
    same = recorded.get("adapter") == name
    settings: dict[str, Any] = {
        "split_seed": recorded.get("split_seed", SPLIT_SEED) if same else SPLIT_SEED,
        "val_fraction": recorded.get("val_fraction", VAL_FRACTION) if same else VAL_FRACTION,
        "test_fraction": recorded.get("test_fraction", TEST_FRACTION) if same else TEST_FRACTION,
        "options": {**((recorded.get("options") or {}) if same else {}), **(options or {})},
        "use": recorded.get("use", "train") if same else "train",
        # the face framing the model was trained on (data.face_crop), whatever the test set
        "face_crop": recorded.get("face_crop", "none"),
        "face_margin": recorded.get("face_margin", FACE_MARGIN),
        "from_run": same,
    }
    loaded = load_dataset(
        f"{name}:{path}",
        image_size=meta.image_size,
        channels=meta.channels,
        cache_dir=cache_dir,
        split_seed=settings["split_seed"],
        val_fraction=settings["val_fraction"],
        test_fraction=settings["test_fraction"],
        options=settings["options"],
        use=settings["use"],
        face_crop=settings["face_crop"],
        face_margin=settings["face_margin"],
    )
    if split == "all":
        scored = _concat_splits(loaded)
    elif split in loaded.splits:
        scored = loaded.splits[split]
    else:
        raise DatasetError(
            f"{data} has no {split!r} split; it has {list(loaded.splits)} (or use --split all)."
        )
    trained = _trained_keys(run_dir)
    overlap = 0
    example = None
    if trained:
        for k in scored.keys:
            rel = relative_key(k, loaded.root)
            if rel in trained or f"{loaded.name}/{rel}" in trained:
                overlap += 1
                example = example or rel
    if overlap and not allow_overlap:
        raise DatasetError(
            f"{overlap} of the {len(scored)} images of {data} ({split}) are images the run in "
            f"{run_dir} trained or validated on (e.g. {example}), so their score would not be "
            "a test score. Score the run's held-out split (--split test with the same dataset), "
            "or pass --allow-overlap (allow_overlap=True) to score them anyway; the output "
            "then records the overlap."
        )
    if not tta:
        views = None
    elif tta_crops is None:  # the run's own views: one number with its report and predict
        views = recorded_tta((meta.extra or {}).get("tta"))
    else:
        views = TTAConfig(hflip=True, crops=tta_crops)
    result = evaluate_model(
        model,
        meta,
        scored,
        loaded.labels,
        tta=views,
        batch_size=batch_size,
        bootstrap=bootstrap,
        seed=0,
    )
    return EvaluateResult(
        **flat_metrics(result, use_tta=tta),
        split=split,
        split_settings=settings,
        overlap={"n": overlap, "allowed": bool(allow_overlap and overlap)},
        produced_by=stamp("eval"),  # ferlab, code digest and library versions
    )
