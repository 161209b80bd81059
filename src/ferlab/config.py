"""The typed experiment configuration: its sections, the checks across them, and loading,
validating and dumping an experiment file (YAML and ``--set`` overrides: ``ferlab.overrides``).

Unknown keys and wrong types are errors that name the key and, for a file, its line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ferlab.data.base import display_name
from ferlab.defaults import CACHE_DIR, FACE_MARGIN, SPLIT_SEED, TEST_FRACTION, VAL_FRACTION
from ferlab.layout import atomic_write, safe_name
from ferlab.overrides import (
    ConfigError,
    apply_overrides,
    deep_merge,
    format_errors,
    load_with_lines,
)

CONFIGS_DIR = Path(__file__).parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(_Strict):
    """One dataset: adapter name, path (for ``synthetic`` the domain) and adapter options."""

    name: str
    path: str = ""
    label: str | None = None  # display name; default ``data.base.display_name``
    options: dict[str, Any] = Field(default_factory=dict)
    # train: trained on (when it has a train split) and tested; test: an external test set,
    # every image of it is scored and nothing of it is trained on (JAFFE, CK+, KDEF...).
    use: Literal["train", "test"] = "train"

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        return display_name(self.name, self.path)


class AugmentConfig(_Strict):
    """Batched tensor augmentations applied on the training device."""

    hflip: float = 0.5
    crop_scale: tuple[float, float] = (0.8, 1.0)  # random resized crop area range
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.1  # fraction of the side
    rotate: float = 10.0  # degrees
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.0  # colour input only
    hue: float = 0.0  # colour input only
    erasing: float = 0.25  # probability of one random erased rectangle
    mixup: float = 0.0  # probability of a Mixup batch
    cutmix: float = 0.0  # probability of a CutMix batch
    mixup_alpha: float = 0.4
    cutmix_alpha: float = 1.0
    # Mixup and CutMix only in the first fraction of the epochs: the last ones train on whole
    # images (timm's ``mixup_off_epoch``, as a fraction so that it holds for the epochs a time
    # budget plans). 1.0: in every epoch.
    mix_until: float = Field(1.0, gt=0, le=1)
    # Progressive resizing (FFCV's rule): the training batches' side starts at
    # ``progressive_scale`` x the model's input side and grows linearly to the full side
    # between the fractions ``progressive_ramp`` of the epochs, in steps of 8 pixels
    # (``augment.progressive_side``); validation, test and predict always see the full side.
    # The model must pool globally (ferlab's compact nets, timm's and torchvision's do).
    # 1.0: off. A time budget counts each epoch at its share of the pixels.
    progressive_scale: float = Field(1.0, gt=0, le=1)
    progressive_ramp: tuple[float, float] = (0.0, 0.75)
    enabled: bool = True

    @field_validator("progressive_ramp")
    @classmethod
    def _ramp_in_order(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= v[1] <= 1:
            raise ValueError(
                f"progressive_ramp must be two fractions of the epochs, 0 <= start <= end <= 1; "
                f"got {list(v)} (for example [0.0, 0.75])"
            )
        return v


class TrainConfig(_Strict):
    """The training recipe: everything here can change what is learned (all of it is keyed)."""

    epochs: int = Field(30, ge=1)  # with time_budget_min: the most epochs the plan may take
    # Minutes of training (train and validation epochs, from the fit's start; the decode and
    # the test evaluation are not in it). The schedule (one-cycle or cosine, annealing phase
    # included) is planned from the rate measured on the training path after a warm-up,
    # re-planned once the first epochs are timed, and ends complete within the budget
    # (``ferlab.training.budget``). The epochs it gives are recorded in fit.json.
    time_budget_min: float | None = Field(None, gt=0)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    momentum: float = 0.9
    weight_decay: float = Field(0.05, ge=0)
    scheduler: Literal["cosine", "onecycle", "none"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float | None = 5.0
    # Exponential moving average of the weights (and BatchNorm statistics), updated after every
    # optimizer step with decay min(ema_decay, (1 + step) / (10 + step)); validation, the best
    # epoch and the saved weights are the average's. None: off.
    ema_decay: float | None = Field(None, gt=0, lt=1)
    # Sharpness-aware minimisation (ferlab.training.sam): each step also takes the gradient at
    # weights moved rho along the normalised gradient, and steps with that one; about twice
    # a step's cost. 0: off. sam_from: the share of the epochs trained before SAM starts (0.8:
    # the last fifth of the schedule only; late SAM is reported to give most of its effect).
    sam_rho: float = Field(0.0, ge=0)
    sam_from: float = Field(0.0, ge=0, lt=1)
    monitor: Literal["balanced_accuracy", "accuracy", "macro_f1", "loss"] = "balanced_accuracy"
    patience: int = Field(8, ge=1)
    min_delta: float = Field(0.0, ge=0)
    balance: Literal["oversample", "weighted", "none"] = "oversample"
    soft_labels: bool = False  # train on vote shares when the dataset has them (FER+)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    # Smoke runs and tests. They change what is learned, so they are part of the run key (a
    # run cut to 8 batches is never reused as the full one); hardware lives in ``runtime``.
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None


class RuntimeConfig(_Strict):
    """Where and how fast a run executes: hardware settings that do not change what is learned.

    This section is not part of any run key, because of where it lives: moving a run from a
    laptop CPU to a GPU, or changing the thread count, reuses its weights.
    """

    accelerator: Literal["auto", "cpu", "cuda", "mps", "gpu"] = "auto"
    devices: int | str = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    # auto: on a GPU bf16-mixed (or 16-mixed); on a CPU bf16-mixed only where the kernel probe
    # measured it >= 1.2x faster than fp32 (ferlab.probe), else 32.
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = "auto"
    # oneDNN (torch's CPU kernels) before training on a CPU: auto = a child process steps the
    # model first and, if that crashes natively, trains with oneDNN off; on/off force it.
    onednn: Literal["auto", "on", "off"] = "auto"
    threads: int | None = Field(None, ge=1)  # torch threads on CPU; None = all cores
    # Progress bars: auto = only when the console is a terminal; in a file (nohup, CI, SLURM
    # logs) plain per-epoch lines instead of hundreds of redrawn bar frames.
    progress: bool | Literal["auto"] = "auto"

    @property
    def show_progress(self) -> bool:
        if self.progress == "auto":
            import sys

            return sys.stdout.isatty() and sys.stderr.isatty()
        return bool(self.progress)


class ModelConfig(_Strict):
    """One model and its input geometry; ``train`` overrides fields of the experiment's
    ``train`` for this model (``train: {batch_size: 96, lr: 0.001}``).

    The input geometry lives here and only here: the data are decoded at each model's
    ``image_size`` x ``channels``. The batch size lives in ``train`` (per model: ``train:``).
    """

    name: str
    pretrained: bool | str = False
    image_size: int = Field(48, ge=8)
    channels: Literal[1, 3] = 1
    label: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to the architecture
    train: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _one_home(cls, data: Any) -> Any:
        if isinstance(data, dict) and "batch_size" in data:
            raise ValueError(
                "batch_size belongs in the model's train section (one home for the batch "
                f"size): write `train: {{batch_size: {data['batch_size']}}}`"
            )
        return data

    @property
    def display(self) -> str:
        return self.label or self.name.replace(":", "-")


class TTAConfig(_Strict):
    hflip: bool = True
    crops: int = 0  # 0, 5 (corners + centre) or 10 (with flips)
    crop_fraction: float = Field(0.9, gt=0, le=1)
    scales: list[float] = Field(default_factory=list)  # e.g. [0.9, 1.1]

    @property
    def enabled(self) -> bool:
        return self.hflip or self.crops > 0 or bool(self.scales)


class EvalConfig(_Strict):
    tta: TTAConfig = Field(default_factory=TTAConfig)
    cross_dataset: bool = True
    ensembles: bool = True
    bootstrap: int = Field(1000, ge=0)
    batch_size: int = Field(256, ge=1)


class MegaConfig(_Strict):
    enabled: bool = False
    datasets: list[str] = Field(default_factory=list)  # display names; empty = all
    balance_sources: bool = False


class DataConfig(_Strict):
    """How datasets are read and split (the input geometry is each model's)."""

    cache_dir: str = CACHE_DIR
    on_bad_file: Literal["error", "skip"] = "skip"
    split_seed: int = SPLIT_SEED
    val_fraction: float = Field(VAL_FRACTION, gt=0, lt=1)
    test_fraction: float = Field(TEST_FRACTION, gt=0, lt=1)
    # Detect the face in every image at decode time and crop the largest to one framing (the
    # box grown by face_margin of its size on each side, made square); images without a face
    # are kept uncropped and counted. Part of the decode cache key and of the run key.
    face_crop: Literal["none", "haar", "mtcnn"] = "none"
    face_margin: float = Field(FACE_MARGIN, ge=0, lt=2)

    @model_validator(mode="before")
    @classmethod
    def _one_home(cls, data: Any) -> Any:
        moved = [k for k in ("image_size", "channels") if isinstance(data, dict) and k in data]
        if moved:
            raise ValueError(
                f"{' and '.join(moved)} belong to each model entry (one home for the input "
                f"geometry): write them under models, e.g. `- {{name: resnet50, "
                f"{', '.join(f'{k}: {data[k]}' for k in moved)}}}`"
            )
        return data


TUNE_METRICS = ("val_balanced_accuracy", "val_accuracy", "val_macro_f1", "val_loss")


class ParamSpec(_Strict):
    """One dimension of a search space: ``{float: [lo, hi], log: bool}``, ``{int: [lo, hi],
    log: bool}`` or ``{choice: [a, b, ...]}`` (exactly one of the three)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    float_range: tuple[float, float] | None = Field(None, alias="float")
    int_range: tuple[int, int] | None = Field(None, alias="int")
    choice: list[Any] | None = None
    log: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        kinds = [
            k
            for k, v in (
                ("float", self.float_range),
                ("int", self.int_range),
                ("choice", self.choice),
            )
            if v is not None
        ]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of float: [lo, hi], int: [lo, hi] or choice: [...]"
                + (f" (got {' and '.join(kinds)})" if kinds else "")
            )
        rng = self.float_range if self.float_range is not None else self.int_range
        if rng is not None:
            lo, hi = rng
            if not lo < hi:
                raise ValueError(f"empty or inverted range [{lo}, {hi}]: write [low, high]")
            if self.log and lo <= 0:
                raise ValueError(f"log: true needs a positive low end; got [{lo}, {hi}]")
        elif self.log:
            raise ValueError("log applies to float and int ranges, not to choice")
        elif not self.choice:
            raise ValueError("choice must list at least one value")
        return self

    @property
    def kind(self) -> Literal["float", "int", "choice"]:
        if self.float_range is not None:
            return "float"
        return "int" if self.int_range is not None else "choice"

    def samples(self) -> list[Any]:
        """Values that bound the space: both ends of a range, every choice (validated up front)."""
        if self.choice is not None:
            return list(self.choice)
        rng = self.float_range if self.float_range is not None else self.int_range
        assert rng is not None
        return list(rng)


class TuneConfig(_Strict):
    """``ferlab tune``: the search space over config fields (dotted paths, as ``--set``) and
    the study settings. Validation chooses: only validation metrics can be the objective."""

    metric: Literal["val_balanced_accuracy", "val_accuracy", "val_macro_f1", "val_loss"] = (
        "val_balanced_accuracy"
    )
    direction: Literal["maximize", "minimize"] | None = None  # default: from the metric
    trials: int = Field(20, ge=1)
    sampler: Literal["tpe", "random", "cmaes", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    # The median pruner compares a trial with the median of the finished trials at the same
    # epoch: only once this many trials finished (a bar of two trials' median is noise), and
    # never in a trial's first ``pruner_warmup_epochs`` epochs (default: the schedule's warm-up
    # plus one epoch, when one-cycle and cosine runs are still far from their final order).
    pruner_startup_trials: int = Field(5, ge=1)
    pruner_warmup_epochs: int | None = Field(None, ge=0)
    dataset: str | None = None  # display name of the tuned dataset; default the first
    model: str | None = None  # display name of the tuned model; default the first
    space: dict[str, ParamSpec]

    @field_validator("space")
    @classmethod
    def _space_not_empty(cls, v: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        if not v:
            raise ValueError(
                "must list at least one field, e.g. `train.lr: {float: [1.0e-4, 1.0e-2], log: true}`"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        natural = "minimize" if self.metric == "val_loss" else "maximize"
        if self.direction is None:
            self.__dict__["direction"] = natural
        elif self.direction != natural:
            raise ValueError(
                f"direction {self.direction} contradicts metric {self.metric} (which is to "
                f"{natural}): drop `direction:` or set it to {natural}"
            )
        if self.sampler == "grid":
            floats = [k for k, s in self.space.items() if s.kind == "float"]
            if floats:
                raise ValueError(
                    f"sampler grid needs int ranges or choices; {', '.join(floats)} is a float "
                    "range: give it as `choice: [...]`, or use sampler tpe or random"
                )
        return self

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


class ExperimentConfig(_Strict):
    name: str = "experiment"
    output_dir: str = "runs"
    seed: int = 0
    # Train every (dataset, model) pair once per seed (``ferlab run --seeds K`` gives
    # seed, seed + 1, ..., seed + K - 1); reports give mean and standard deviation across seeds.
    # None: the one seed ``seed``.
    seeds: list[int] | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    datasets: list[DatasetConfig]
    models: list[ModelConfig]
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    mega: MegaConfig = Field(default_factory=MegaConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    tune: TuneConfig | None = None  # ferlab tune's search; ignored by ferlab run

    @field_validator("datasets", "models")
    @classmethod
    def _not_empty(cls, v: list[Any]) -> list[Any]:
        if not v:
            raise ValueError("must list at least one entry")
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must list at least one seed, e.g. [0, 1, 2]; or drop `seeds:`")
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"seeds must be distinct; {dup} appear more than once")
        return v

    @property
    def seed_list(self) -> list[int]:
        """The seeds every pair is trained with: ``seeds``, else ``[seed]``."""
        return list(self.seeds) if self.seeds else [self.seed]

    def train_for(self, model: ModelConfig) -> TrainConfig:
        """The experiment's training settings with the model's overrides applied."""
        merged = deep_merge(self.train.model_dump(), model.train)
        try:
            return TrainConfig.model_validate(merged)
        except ValidationError as e:
            raise ConfigError(
                format_errors(e, prefix=f"models[{model.name}].train", lines={})
            ) from e


RESERVED_NAMES = {"datasets": "mega", "models": "ensemble"}


def name_clashes(cfg: ExperimentConfig) -> list[tuple[str, int, int, str]]:
    """Entries whose display names (or their file-name forms) collide: ``(section, i, j, name)``.

    Results are filed by display name, so two entries with one name would share one slot;
    ``mega`` and ``ensemble`` are taken by the mega dataset and the ensembles.
    """
    out: list[tuple[str, int, int, str]] = []
    sections: dict[str, list[str]] = {
        "datasets": [d.display for d in cfg.datasets],
        "models": [m.display for m in cfg.models],
    }
    for section, names in sections.items():
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if safe_name(name) == RESERVED_NAMES[section]:
                out.append((section, -1, i, name))
                continue
            j = seen.setdefault(safe_name(name), i)
            if j != i:
                out.append((section, j, i, name))
    return out


def _entry_text(cfg: ExperimentConfig, section: str, i: int) -> str:
    if section == "datasets":
        d = cfg.datasets[i]
        return f"datasets[{i}] ({d.name}: {d.path!r})"
    m = cfg.models[i]
    return f"models[{i}] ({m.name}, pretrained: {m.pretrained})"


def check_names(
    cfg: ExperimentConfig, file: str = "", lines: dict[tuple[Any, ...], int] | None = None
) -> None:
    """Refuse clashing display names (``name_clashes``), naming both entries and `label:`."""
    lines = lines or {}
    clashes = name_clashes(cfg)
    if not clashes:
        return
    msgs = []
    for section, i, j, name in clashes:
        where = f" ({file}, line {lines[(section, j)]})" if file and (section, j) in lines else ""
        if i < 0:
            msgs.append(
                f"  {_entry_text(cfg, section, j)}{where} is named {name!r}, which ferlab uses "
                f"for the {'mega dataset' if section == 'datasets' else 'ensembles'}: give it "
                "another `label:`."
            )
            continue
        first = f" (line {lines[(section, i)]})" if file and (section, i) in lines else ""
        msgs.append(
            f"  {_entry_text(cfg, section, i)}{first} and {_entry_text(cfg, section, j)}{where} "
            f"are both named {name!r}, so their results would share one slot. Give each a "
            f"distinct `label:` field (e.g. `label: {name}_2`)."
        )
    raise ConfigError("Invalid experiment configuration:\n" + "\n".join(msgs))


def _check_mega(cfg: ExperimentConfig, file: str, lines: dict[tuple[Any, ...], int]) -> None:
    """``mega.balance_sources`` oversamples (source, class) cells: it is the balancing, so a
    model trained with ``balance: weighted`` or ``none`` would silently get it instead."""
    if not (cfg.mega.enabled and cfg.mega.balance_sources):
        return
    clashes = [
        (i, m, b)
        for i, m in enumerate(cfg.models)
        if (b := cfg.train_for(m).balance) != "oversample"
    ]
    if clashes:
        where = (
            f" ({file}, line {lines[('mega', 'balance_sources')]})"
            if (file and ("mega", "balance_sources") in lines)
            else ""
        )
        names = ", ".join(f"models[{i}] ({m.display}) has balance: {b}" for i, m, b in clashes)
        raise ConfigError(
            "Invalid experiment configuration:\n"
            f"  mega.balance_sources{where} oversamples every (source, class) cell of the mega "
            f"dataset, which contradicts train.balance: {names}. Set mega.balance_sources: "
            "false, or balance: oversample for those models."
        )


def _check_model_overrides(
    cfg: ExperimentConfig, file: str, lines: dict[tuple[Any, ...], int]
) -> None:
    """Each model's ``train:`` overrides, validated like the rest (key, file and line)."""
    for i, m in enumerate(cfg.models):
        if not m.train:
            continue
        try:
            TrainConfig.model_validate(deep_merge(cfg.train.model_dump(), m.train))
        except ValidationError as e:
            raise ConfigError(
                format_errors(e, lines=lines, file=file, loc_prefix=("models", i, "train"))
            ) from e


def space_overrides(params: dict[str, Any]) -> list[str]:
    """Sampled values as ``--set`` items (JSON is YAML, so every value parses back exactly)."""
    return [f"{path}={json.dumps(value)}" for path, value in params.items()]


def tune_targets(cfg: ExperimentConfig) -> tuple[int, int]:
    """The indices of the (dataset, model) pair ``tune:`` names (default: the first of each)."""
    assert cfg.tune is not None
    names = {"dataset": [d.display for d in cfg.datasets], "model": [m.display for m in cfg.models]}
    out = []
    for what, name in (("dataset", cfg.tune.dataset), ("model", cfg.tune.model)):
        if name is None:
            out.append(0)
        elif name in names[what]:
            out.append(names[what].index(name))
        else:
            raise ConfigError(
                f"Invalid experiment configuration:\n  tune.{what}: {name!r} is not one of this "
                f"experiment's {what} names ({', '.join(names[what])})"
            )
    return out[0], out[1]


def _section_of(model: type[BaseModel], field: str) -> tuple[bool, type[BaseModel] | None]:
    """(is a list, the section class inside) of one field; a model's ``train:`` mapping is a
    ``TrainConfig`` of overrides."""
    import typing

    if model is ModelConfig and field == "train":
        return False, TrainConfig
    ann = model.model_fields[field].annotation
    is_list = typing.get_origin(ann) is list
    for a in (ann, *typing.get_args(ann)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return is_list, a
    return is_list, None


def _path_problem(model: type[BaseModel], path: list[str], done: list[str]) -> str | None:
    """What is wrong with a dotted config path (the unknown part and the nearest valid field),
    or None; free-form mappings (``kwargs``, ``options``) accept any key below them."""
    import difflib

    part, rest = path[0], path[1:]
    where = ".".join(done) or "the experiment file"
    fields = list(model.model_fields)
    if part not in fields:
        close = difflib.get_close_matches(part, fields, n=1)
        hint = f"; the nearest valid field is {'.'.join([*done, close[0]])}" if close else ""
        return f"{part!r} is not a field of {where} (fields: {', '.join(fields)}){hint}"
    is_list, sub = _section_of(model, part)
    if not rest:
        return None
    if is_list:
        if not rest[0].isdigit():
            here = ".".join([*done, part])
            return f"{here} is a list: address an entry by its index, e.g. {here}.0"
        if sub is None or len(rest) == 1:
            return None
        return _path_problem(sub, rest[1:], [*done, part, rest[0]])
    if sub is None:
        return None
    return _path_problem(sub, rest, [*done, part])


# What decides which images are train, validation and test: a search over any of them would let
# one trial's test (or validation) images be another trial's training images.
SPLIT_KEYS = ("data.split_seed", "data.val_fraction", "data.test_fraction")


def _split_problem(path: str) -> str | None:
    if path in SPLIT_KEYS:
        return (
            f"{path} decides which images are validation and test images; tuning it would let "
            "one trial's test (or validation) images be another trial's training images. Fix "
            "it in the data section and tune training settings only"
        )
    if path.split(".")[0] == "datasets":
        return (
            "a dataset's name, path or options decide which images each split holds; tuning "
            "them would let one trial's test (or validation) images be another trial's "
            "training images. Fix the datasets and tune training settings only"
        )
    return None


def _check_tune(
    cfg: ExperimentConfig, raw: dict[str, Any], file: str, lines: dict[tuple[Any, ...], int]
) -> None:
    """Every path of ``tune.space`` exists, and both ends of every range and every choice
    make a valid experiment (applied with ``apply_overrides``, checked by ``validate_config``)."""
    import copy

    if cfg.tune is None:
        return
    tune_targets(cfg)
    base = {k: v for k, v in raw.items() if k != "tune"}
    for path, spec in cfg.tune.space.items():
        line = lines.get(("tune", "space", path))
        where = f" ({file}, line {line})" if file and line else (f" ({file})" if file else "")
        key = f"tune.space.{path}{where}"
        problem = (
            "the tune section cannot tune itself"
            if path.split(".")[0] == "tune"
            else _split_problem(path) or _path_problem(ExperimentConfig, path.split("."), [])
        )
        if problem:
            raise ConfigError(f"Invalid experiment configuration:\n  {key}: {problem}")
        for value in spec.samples():
            trial = copy.deepcopy(base)
            try:
                validate_config(apply_overrides(trial, space_overrides({path: value})))
            except ConfigError as e:
                detail = str(e).removeprefix("Invalid experiment configuration:\n").strip()
                raise ConfigError(
                    f"Invalid experiment configuration:\n  {key}: the value {value!r} does not "
                    f"make a valid experiment: {detail}"
                ) from e


def config_hash(obj: Any) -> str:
    """A stable short hash of a JSON-able object (config sections, run keys)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def resolve_config_path(name: str | Path | None) -> Path:
    """A path, or the name of a shipped config (``default``, ``fer2013_cpu``, ``seed_gpu``, ``tune_demo``)."""
    if name is None:
        return CONFIGS_DIR / "default.yaml"
    p = Path(name).expanduser()
    if p.exists():
        return p
    shipped = CONFIGS_DIR / f"{Path(str(name)).stem}.yaml"
    if shipped.exists() and p.suffix in ("", ".yaml", ".yml") and len(p.parts) <= 2:
        return shipped
    known = ", ".join(sorted(q.stem for q in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"Experiment file {str(p)!r} does not exist. Shipped configs: {known}.")


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Load and validate an experiment file (default: the shipped ``default.yaml``)."""
    file = resolve_config_path(path)
    text = file.read_text()
    try:
        raw, lines = load_with_lines(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: the experiment file must be a mapping of sections.")
    raw = apply_overrides(raw, list(overrides or []))
    return validate_config(raw, file=str(file), lines=lines)


def validate_config(
    raw: dict[str, Any], *, file: str = "", lines: dict[tuple[Any, ...], int] | None = None
) -> ExperimentConfig:
    """Validate a raw mapping; errors name each bad key (and its file line when known)."""
    lines = lines or {}
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, lines=lines, file=file)) from e
    check_names(cfg, file, lines)
    _check_model_overrides(cfg, file, lines)
    _check_mega(cfg, file, lines)
    _check_tune(cfg, raw, file, lines)
    return cfg


def with_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """``cfg`` with ``--set`` style ``overrides`` applied, validated again (``cfg`` unchanged)."""
    if not overrides:
        return cfg
    raw = cfg.model_dump(mode="json", by_alias=True, exclude_none=False)
    return validate_config(apply_overrides(raw, overrides))


def dump_config(cfg: BaseModel, path: Path) -> None:
    atomic_write(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
