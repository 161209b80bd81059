"""Is one model really better than another on the same test images? Paired statistics.

Two models scored on the same test split make *paired* observations: each image is either
right or wrong for each model. Comparing their two accuracy intervals side by side throws the
pairing away (the intervals overlap long after the difference is real), so this module tests
the difference itself:

- ``paired_bootstrap_diff``: accuracy of A minus accuracy of B, with a percentile-bootstrap
  interval that resamples the *same* images for both models;
- ``mcnemar_exact``: McNemar's exact test, a two-sided binomial test on the images exactly one
  of the two models gets right;
- ``compare_pairs``: both, for every unordered pair of models scored on one test split, with
  the images aligned by key, and a verdict in plain words;
- ``seed_differences`` and ``mean_std``: with several training seeds, the accuracy difference
  of seed s of A against seed s of B for every seed, and its mean and standard deviation across
  seeds: how much of a difference the choice of seed alone moves (the paired interval above is
  one run's and knows nothing of it);
- ``across_seeds_test``: the verdict of a comparison trained with several seeds, from every
  seed (see its docstring for the test and why);
- ``holm``: which of the several comparisons of one report survive Holm's step-down
  correction for multiple comparisons.

Pure numpy and the standard library, no file access: ``ferlab.evaluation.analysis`` reads the
planned evaluations and calls these.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ALPHA = 0.05  # significance level of the verdict
_MAX_CHUNK_ELEMENTS = 4_000_000  # resampled indices per bootstrap chunk (~32 MB of int64)


def _as_correct(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one flag per image (1-D); got shape {arr.shape}.")
    if arr.dtype != bool:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{what} must hold only 0/1 or True/False (right/wrong per image).")
        arr = arr.astype(bool)
    return arr


def _paired(correct_a: Any, correct_b: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _as_correct(correct_a, "correct_a")
    b = _as_correct(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(
            f"correct_a has {a.shape[0]} images and correct_b {b.shape[0]}; a paired comparison "
            "needs the same images, in the same order, for both models."
        )
    return a, b


def discordant(correct_a: Any, correct_b: Any) -> tuple[int, int]:
    """``(b01, b10)``: images only B gets right (A wrong, B right), images only A gets right."""
    a, b = _paired(correct_a, correct_b)
    return int((~a & b).sum()), int((a & ~b).sum())


def paired_bootstrap_diff(
    correct_a: Any,
    correct_b: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float | None, float | None]:
    """``(diff, low, high)``: accuracy of A minus accuracy of B and its percentile interval.

    Each of the ``n_boot`` resamples draws n images with replacement and scores *both* models
    on that same draw, so the interval reflects the disagreement between the models rather
    than the sampling noise each accuracy carries on its own. Deterministic for a seed: the
    resamples are the rows of ``default_rng(seed).integers(0, n, size=(n_boot, n))``, drawn in
    chunks so memory stays bounded. ``low`` and ``high`` are None when ``n_boot`` is 0.
    """
    a, b = _paired(correct_a, correct_b)
    n = int(a.shape[0])
    if n == 0:
        raise ValueError("No images to compare: correct_a and correct_b are empty.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95); got {level}.")
    # Per image: +1 only A right, -1 only B right, 0 both right or both wrong.
    d = a.astype(np.int64) - b.astype(np.int64)  # (N,)
    diff = float(d.mean())
    if n_boot <= 0:
        return diff, None, None
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // n)
    stats = []
    for lo in range(0, n_boot, chunk):
        r = min(chunk, n_boot - lo)
        idx = rng.integers(0, n, size=(r, n))  # (R, N)
        stats.append(d[idx].mean(axis=1))  # (R,)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(np.concatenate(stats), [tail, 1.0 - tail])
    return diff, float(low), float(high)


def mcnemar_exact(correct_a: Any, correct_b: Any) -> float:
    """Two-sided exact McNemar p-value of "A and B are equally accurate on these images".

    Only the discordant images carry information: under the null hypothesis each is as likely
    to favour A as B, so ``b10 ~ Bin(b01 + b10, 1/2)`` and
    ``p = min(1, 2 * P[X <= min(b01, b10)])``; ``p = 1`` without discordant images. Computed
    in exact integer arithmetic (one correctly rounded division at the end), so it neither
    overflows nor loses precision for thousands of images.
    """
    b01, b10 = discordant(correct_a, correct_b)
    return mcnemar_exact_counts(b01, b10)


def mcnemar_exact_counts(b01: int, b10: int) -> float:
    """``mcnemar_exact`` from the two discordant counts."""
    if b01 < 0 or b10 < 0:
        raise ValueError(f"Discordant counts must be >= 0; got b01={b01}, b10={b10}.")
    n = b01 + b10
    if n == 0:
        return 1.0
    k = min(b01, b10)
    if 2 * k >= n:  # the tail holds at least half the mass: 2 * P >= 1
        return 1.0
    term = 1  # C(n, 0)
    total = 1
    for i in range(k):  # C(n, i + 1) = C(n, i) * (n - i) / (i + 1), exact at every step
        term = term * (n - i) // (i + 1)
        total += term
    return min(1.0, (2 * total) / (1 << n))


def verdict(model_a: str, model_b: str, diff: float, p_value: float, alpha: float = ALPHA) -> str:
    """``"resnet18 better (p = 0.003)"`` when McNemar's test rejects equality at ``alpha``,
    else ``"no significant difference (p = 0.41)"``."""
    p_text = f"p = {p_value:.3f}" if p_value >= 0.001 else f"p = {p_value:.1e}"
    if p_value < alpha and diff != 0:
        better = model_a if diff > 0 else model_b
        return f"{better} better ({p_text})"
    return f"no significant difference ({p_text})"


def align_by_key(
    keys_a: Sequence[str], correct_a: Any, keys_b: Sequence[str], correct_b: Any
) -> tuple[np.ndarray, np.ndarray] | str:
    """Both models' flags in one image order (sorted keys), or the reason they cannot be paired."""
    a = _as_correct(correct_a, "correct_a")
    b = _as_correct(correct_b, "correct_b")
    ka, kb = np.asarray(list(keys_a), dtype=str), np.asarray(list(keys_b), dtype=str)
    for keys, flags, name in ((ka, a, "A"), (kb, b, "B")):
        if keys.shape != flags.shape:
            raise ValueError(
                f"Model {name}: {keys.shape[0]} keys but {flags.shape[0]} correctness flags."
            )
        if np.unique(keys).shape[0] != keys.shape[0]:
            return f"model {name}'s predictions repeat an image key"
    order_a, order_b = np.argsort(ka, kind="stable"), np.argsort(kb, kind="stable")
    if ka.shape != kb.shape or not np.array_equal(ka[order_a], kb[order_b]):
        common = np.intersect1d(ka, kb).shape[0]
        return (
            f"the two were scored on different images ({ka.shape[0]} and {kb.shape[0]} images, "
            f"{common} in common)"
        )
    return a[order_a], b[order_b]


def compare_two(
    correct_a: Any,
    correct_b: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The numbers of one paired comparison of aligned flags (no names, no verdict)."""
    a, b = _paired(correct_a, correct_b)
    diff, low, high = paired_bootstrap_diff(a, b, n_boot=n_boot, seed=seed, level=level)
    b01, b10 = discordant(a, b)
    return {
        "n": int(a.shape[0]),
        "accuracy_a": float(a.mean()),
        "accuracy_b": float(b.mean()),
        "difference": diff,
        "difference_ci_low": low,
        "difference_ci_high": high,
        "b01": b01,
        "b10": b10,
        "p_value": mcnemar_exact_counts(b01, b10),
    }


def compare_pairs(
    correct: Mapping[str, tuple[Sequence[str], Any]],
    *,
    dataset: str,
    test: str,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    alpha: float = ALPHA,
    unavailable: Mapping[str, str] | None = None,
    order: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per unordered pair of models scored on one test split.

    ``correct`` maps a model name to ``(image keys, right-or-wrong per image)``, in the order
    models should be listed; model A of a row comes before model B. ``unavailable`` maps models
    that belong in the comparison but have no usable predictions to the reason; their pairs
    get a row with that reason in ``note`` and no numbers, as do pairs whose key sets differ.
    ``order`` lists every model in the order to pair them (default: ``correct``'s order, then
    ``unavailable``'s).
    Each row: ``dataset, test_dataset, model_a, model_b``, the ``compare_two`` numbers
    (``difference`` is A minus B; ``b01``: only B right, ``b10``: only A right), ``verdict``
    and ``note`` (None when compared).
    """
    unavailable = dict(unavailable or {})
    names = list(correct) + [m for m in unavailable if m not in correct]
    if order is not None:
        if sorted(order) != sorted(names):
            raise ValueError(f"order {list(order)} must list exactly the models {names}.")
        names = list(order)
    rows = []
    for model_a, model_b in itertools.combinations(names, 2):
        row: dict[str, Any] = {
            "dataset": dataset,
            "test_dataset": test,
            "model_a": model_a,
            "model_b": model_b,
        }
        reason = next(
            (f"{m}: {unavailable[m]}" for m in (model_a, model_b) if m in unavailable), None
        )
        if reason is None:
            aligned = align_by_key(*correct[model_a], *correct[model_b])
            if isinstance(aligned, str):
                reason = aligned
            elif aligned[0].shape[0] == 0:
                reason = "no test images to compare"
            else:
                numbers = compare_two(*aligned, n_boot=n_boot, seed=seed, level=level)
                row.update(numbers)
                row["verdict"] = verdict(
                    model_a, model_b, numbers["difference"], numbers["p_value"], alpha
                )
                row["note"] = None
        if reason is not None:
            row.update(verdict="not compared", note=reason)
        rows.append(row)
    return rows


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (divisor n - 1) of one quantity across training
    seeds; ``(None, None)`` without values, the std None with a single value."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return None, None
    mean = float(arr.mean())
    return mean, float(arr.std(ddof=1)) if arr.size > 1 else None


def seed_differences(
    per_seed: Sequence[Mapping[str, tuple[Sequence[str], Any]]],
) -> dict[tuple[str, str], list[float]]:
    """The accuracy difference A - B of every unordered pair of models, one value per seed.

    ``per_seed`` holds one mapping per training seed, model name -> ``(image keys,
    right-or-wrong per image)`` of that seed's model, in the order models should be paired
    (model A before model B, as in ``compare_pairs``). Seed s of A is paired with seed s of B;
    a seed whose two models were not scored on the same images adds no value for that pair.
    """
    return {models: [d for d, _ in values] for models, values in seed_comparisons(per_seed).items()}


def seed_comparisons(
    per_seed: Sequence[Mapping[str, tuple[Sequence[str], Any]]],
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """``seed_differences`` with each seed's McNemar exact p: ``(difference, p)`` per seed."""
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for correct in per_seed:
        for model_a, model_b in itertools.combinations(list(correct), 2):
            aligned = align_by_key(*correct[model_a], *correct[model_b])
            if isinstance(aligned, str) or aligned[0].shape[0] == 0:
                continue
            a, b = aligned
            d = a.astype(np.int64) - b.astype(np.int64)  # (N,) as in paired_bootstrap_diff
            b01, b10 = discordant(a, b)
            out.setdefault((model_a, model_b), []).append(
                (float(d.mean()), mcnemar_exact_counts(b01, b10))
            )
    return out


# --------------------------------------------------------------------------- several seeds
def student_t_two_sided(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom: ``P[|T| >= |t|]``
    ``= I_{df / (df + t^2)}(df / 2, 1 / 2)`` (the regularized incomplete beta function; no
    scipy here)."""
    if df < 1:
        raise ValueError(f"df must be at least 1; got {df}.")
    if math.isnan(t):
        return 1.0
    if math.isinf(t):
        return 0.0
    return min(1.0, max(0.0, _betainc(df / 2.0, 0.5, df / (df + t * t))))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)`` by its continued fraction (modified Lentz),
    used directly where it converges fast (``x < (a + 1) / (a + b + 2)``), else through
    ``1 - I_{1-x}(b, a)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def _beta_cf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def t_test_mean_zero(values: Sequence[float]) -> float | None:
    """Two-sided one-sample t-test of "the mean is 0" (None with fewer than two values). Equal
    values give 1 when they are 0 and 0 otherwise (no spread at all: t is infinite)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size < 2:
        return None
    mean, sd = float(arr.mean()), float(arr.std(ddof=1))
    if sd == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    return student_t_two_sided(mean / (sd / math.sqrt(arr.size)), int(arr.size) - 1)


def across_seeds_test(
    differences: Sequence[float], p_values: Sequence[float]
) -> dict[str, float | None]:
    """One p-value for a comparison trained with several seeds, from every seed.

    ``differences[s]`` is seed s's paired accuracy difference A - B (seed s of A against seed
    s of B) and ``p_values[s]`` its McNemar exact p. The combined p is
    ``max(p_seeds, p_images)``:

    - ``p_seeds``: a two-sided one-sample t-test of "the mean per-seed difference is 0" over
      the K differences. The claim a comparison makes is about the two recipes, and the
      training seed is their unit of replication: a difference that changes sign from seed to
      seed is not one the recipe makes. With K seeds the test has K - 1 degrees of freedom,
      so two seeds need nearly equal differences (|t| > 12.7) and 3-5 seeds are the useful
      range.
    - ``p_images``: the largest per-seed McNemar p, taken as 1 for a seed whose difference
      has the other sign than the mean. Every seed's models are scored on the *same* test
      images, so the t-test above treats those images as fixed and cannot see how much a
      differently drawn test set would move the difference; McNemar sees exactly that. The
      per-seed McNemar p-values cannot be combined by Fisher's or Stouffer's method (those
      assume independent tests, and these share their images), nor can their discordant
      counts be pooled (each image would count K times); requiring every seed to pass is
      valid whatever the dependence.

    Taking the larger of the two is an intersection-union test (Berger, 1982): it rejects
    only when both nulls are rejected, and its level is ``alpha`` without any assumption on
    how the two tests depend on each other. It is conservative by design: a verdict of
    "better" then holds across training seeds *and* across test images. ``p_value`` is None
    with fewer than two seeds (no test across seeds).
    """
    diffs = [float(d) for d in differences]
    ps = [float(p) for p in p_values]
    if len(diffs) != len(ps):
        raise ValueError(f"{len(diffs)} differences but {len(ps)} p-values: one of each per seed.")
    p_seeds = t_test_mean_zero(diffs)
    if p_seeds is None:
        return {"p_value": None, "p_seeds": None, "p_images": None}
    mean = float(np.mean(diffs))
    p_images = max(p if d * mean > 0 else 1.0 for d, p in zip(diffs, ps, strict=True))
    return {"p_value": max(p_seeds, p_images), "p_seeds": p_seeds, "p_images": p_images}


def seed_verdict(
    model_a: str,
    model_b: str,
    mean_diff: float,
    p_value: float | None,
    n_seeds: int,
    alpha: float = ALPHA,
) -> str:
    """``verdict`` for a comparison across ``n_seeds`` seeds (``across_seeds_test``'s p)."""
    if p_value is None:
        return f"not tested: {n_seeds} seed compared, a test across seeds needs 2 or more"
    return verdict(model_a, model_b, mean_diff, p_value, alpha).replace(
        " (p = ", f" across {n_seeds} seeds (p = "
    )


# --------------------------------------------------------------------------- several comparisons
def holm(p_values: Sequence[float], alpha: float = ALPHA) -> tuple[list[float], list[bool]]:
    """Holm's step-down correction of m p-values of one report: ``(adjusted p, survives)``.

    Sorted ascending, p_(k) is rejected while ``p_(j) <= alpha / (m - j + 1)`` for every j up
    to k; the first that fails stops the rejections. It keeps the chance of *any* false
    "better" among the m comparisons at most ``alpha`` with no assumption on how they depend
    on each other (they share models and test images). The adjusted p is
    ``max_{j <= k} min(1, (m - j + 1) p_(j))``; a comparison survives when it is ``<= alpha``
    (the same decision).
    """
    ps = [float(p) for p in p_values]
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted, [a <= alpha for a in adjusted]
