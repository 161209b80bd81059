"""What is in a dataset before anything trains on it: the report behind ``ferlab data inspect``.

``inspect_dataset`` indexes a dataset with its adapter, decodes every image once (through the
decode-once cache, so training later reuses the work) to find the files that cannot be read,
and hashes every image's bytes to find exact duplicates, including the ones that leak across
splits or carry two different labels. Counts are those of the splits *as the adapter gives
them* (for FER2013: train, val = PublicTest, test = PrivateTest); splits the loader would
carve for training are only mentioned in the protocol. Where the files sit in split folders
(``train/``, ``test/``, ``FER2013Valid/``, ...), the same counts per folder are reported too,
since a folder-level split (FER2013's train/ vs test/) is how most papers count leakage.

``format_inspection`` renders the report for the console; ``write_inspection_outputs`` writes
its JSON and the class-distribution PNG.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ferlab.data.base import (
    SPLITS,
    BadFile,
    DatasetError,
    DatasetIndex,
    Record,
    display_name,
    index_dataset,
)
from ferlab.data.cache import ON_BAD_FILE, bad_files_message
from ferlab.data.decode import decode_problems
from ferlab.data.loading import adapter_options, load_dataset, merge_bad_files
from ferlab.defaults import CACHE_DIR
from ferlab.labels import CANONICAL

DEFAULT_SIZE = 48  # the training defaults (DataConfig), so the cache built here is reused
DEFAULT_CHANNELS = 1
# load_dataset's default split settings: adapters that split by themselves get these.
SPLIT_SEED, VAL_FRACTION, TEST_FRACTION = 0, 0.1, 0.1
MAX_EXAMPLES = 10  # duplicate groups listed in the report
# A directory name that names a split: train, Training, FER2013Valid, val_set, test, ...
_SPLIT_WORD = re.compile(
    r"(?:^|[^a-z])(train|training|val|valid|validation|test|testing)(?:[^a-z]|$)"
)


def inspect_dataset(
    name: str,
    path: str,
    *,
    options: dict[str, Any] | None = None,
    size: int | None = None,
    channels: int | None = None,
    cache_dir: str | Path = CACHE_DIR,
    with_cache: bool = True,
    decode: bool = True,
    on_bad_file: str = "skip",
) -> dict[str, Any]:
    """Counts, imbalance, bad files and exact duplicates of one dataset, as a JSON-able dict.

    ``with_cache``: decode through ``load_dataset`` (the cache is built, or reused, at ``size``
    and ``channels``, default 48 px grey like training); otherwise decode in memory only.
    ``decode=False`` skips decoding: only the problems the adapter finds are reported.
    ``on_bad_file="error"``: after looking at every file, raise ``DatasetError`` listing the
    bad ones (as training would refuse them) instead of reporting them.
    Shape: ``{"dataset", "root", "protocol", "labels", "splits", "folders",
    "imbalance_ratio", "bad_files", "excluded", "ignored", "duplicates", "decoded"}``;
    ``ignored`` counts what the adapter skipped on purpose (OS litter, notes), by kind.
    """
    if on_bad_file not in ON_BAD_FILE:
        raise DatasetError(f"on_bad_file must be 'error' or 'skip', got {on_bad_file!r}.")
    opts = dict(options or {})
    size = size or DEFAULT_SIZE
    channels = channels or DEFAULT_CHANNELS
    # The same adapter options as load_dataset gives (the default split settings).
    index = index_dataset(
        name,
        path,
        **adapter_options(
            name,
            opts,
            split_seed=SPLIT_SEED,
            val_fraction=VAL_FRACTION,
            test_fraction=TEST_FRACTION,
        ),
    )
    protocol = index.protocol
    bad = list(index.bad_files)
    if decode:
        decode_bad, loader_protocol = _decode_problems(
            index, name, path, opts, size, channels, cache_dir, with_cache
        )
        bad = merge_bad_files(bad, decode_bad)
        protocol = loader_protocol or protocol
    if bad and on_bad_file == "error":
        raise DatasetError(bad_files_message(name, bad))
    unusable = {b.path for b in bad}
    splits = {
        split: [r for r in records if r.key not in unusable]
        for split, records in index.splits.items()
    }
    split_counts = {
        split: _split_summary(records, index.labels, len(index.splits[split]) - len(records))
        for split, records in splits.items()
    }
    folder_of = _folder_of(splits, Path(index.root))
    folders = _folder_counts(splits, folder_of, index.labels)
    first = "train" if "train" in split_counts else next(iter(split_counts), None)
    return {
        "dataset": name,
        "root": index.root,
        "protocol": protocol,
        "labels": list(index.labels),
        "color": index.color,
        "splits": split_counts,
        "folders": folders,
        "imbalance_ratio": split_counts[first]["imbalance_ratio"] if first else None,
        "bad_files": [{"path": b.path, "reason": b.reason} for b in bad],
        "excluded": dict(index.excluded),
        "ignored": dict(index.ignored),
        "duplicates": find_duplicates(splits, folder_of if folders else None),
        "decoded": (
            {"size": size, "channels": channels, "cache": bool(with_cache)} if decode else None
        ),
    }


# --------------------------------------------------------------------------- decoding


def _decode_problems(
    index: DatasetIndex,
    name: str,
    path: str,
    options: dict[str, Any],
    size: int,
    channels: int,
    cache_dir: str | Path,
    with_cache: bool,
) -> tuple[list[BadFile], str | None]:
    """Undecodable images (path = record key) and, via the loader, the training protocol."""
    if with_cache:
        try:
            loaded = load_dataset(
                f"{name}:{path}",
                image_size=size,
                channels=channels,
                cache_dir=cache_dir,
                on_bad_file="skip",
                options=options,
            )
        except DatasetError:
            # The loader refuses datasets it cannot train on (no train split); inspecting
            # them is still useful, so decode in memory instead.
            pass
        else:
            return list(loaded.bad_files), loaded.protocol
    return _decode_in_memory(index, size, channels), None


def _decode_in_memory(index: DatasetIndex, size: int, channels: int) -> list[BadFile]:
    records = [r for recs in index.splits.values() for r in recs]
    return [BadFile(e.path, e.reason) for e in decode_problems(records, size, channels)]


# --------------------------------------------------------------------------- counts


def _per_class(records: Iterable[Record], labels: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(labels, 0)
    for r in records:
        name = CANONICAL[r.label]
        counts[name] = counts.get(name, 0) + 1
    return counts


def imbalance_ratio(per_class: dict[str, int]) -> float | None:
    """Largest over smallest class count; ``None`` when a class is empty (ratio infinite)."""
    values = list(per_class.values())
    if not values or min(values) == 0:
        return None
    return round(max(values) / min(values), 3)


def _split_summary(records: list[Record], labels: Sequence[str], n_bad: int) -> dict[str, Any]:
    per_class = _per_class(records, labels)
    return {
        "total": len(records),
        "per_class": per_class,
        "imbalance_ratio": imbalance_ratio(per_class),
        "bad": n_bad,
    }


def _folder_of(splits: dict[str, list[Record]], root: Path) -> dict[str, str]:
    """Record key -> its split folder relative to the root (``train``, ``DATASET/test``).

    Empty when some image file does not sit under a split-named folder (class folders only,
    CSV rows, synthetic draws): the folder view is then left out.
    """
    out: dict[str, str] = {}
    for records in splits.values():
        for r in records:
            if r.draw is not None or r.pixels is not None:
                return {}
            folder = _split_folder(Path(r.path), root)
            if folder is None:
                return {}
            out[r.key] = folder
    return out


def _split_folder(file: Path, root: Path) -> str | None:
    try:
        parts = file.parent.relative_to(root).parts
    except ValueError:
        return None
    for i, part in enumerate(parts):
        if _SPLIT_WORD.search(part.lower()):
            return "/".join(parts[: i + 1])
    return None


def _folder_counts(
    splits: dict[str, list[Record]], folder_of: dict[str, str], labels: Sequence[str]
) -> dict[str, dict[str, Any]]:
    if not folder_of:
        return {}
    by_folder: dict[str, list[Record]] = defaultdict(list)
    for records in splits.values():
        for r in records:
            by_folder[folder_of[r.key]].append(r)
    return {
        folder: {"total": len(recs), "per_class": _per_class(recs, labels)}
        for folder, recs in sorted(by_folder.items(), key=lambda kv: _folder_rank(kv[0]))
    }


def _folder_rank(folder: str) -> tuple[int, str]:
    """Sort split folders train, val, test, then by name."""
    match = _SPLIT_WORD.search(folder.lower().rsplit("/", 1)[-1])
    word = match.group(1) if match else ""
    rank = 0 if word.startswith("train") else 1 if word.startswith("val") else 2
    return rank, folder


# --------------------------------------------------------------------------- duplicates


def content_hash(record: Record, file_hashes: dict[str, bytes]) -> bytes | None:
    """A digest of what the record shows: file bytes (+ face box), or a CSV row's pixels.

    ``None`` for synthetic draws (distinct seeds by construction). ``file_hashes`` caches file
    digests, so many face boxes in one photo read it once.
    """
    if record.draw is not None:
        return None
    if record.pixels is not None:
        return hashlib.blake2b(" ".join(record.pixels.split()).encode(), digest_size=16).digest()
    digest = file_hashes.get(record.path)
    if digest is None:
        with open(record.path, "rb") as fh:
            digest = hashlib.blake2b(fh.read(), digest_size=16).digest()
        file_hashes[record.path] = digest
    if record.box is not None:
        return hashlib.blake2b(digest + repr(record.box).encode(), digest_size=16).digest()
    return digest


def find_duplicates(
    splits: dict[str, list[Record]], folder_of: dict[str, str] | None = None
) -> dict[str, Any]:
    """Groups of byte-identical images over all splits, and those that leak or disagree.

    ``groups``: contents held by >= 2 distinct records; ``files``: the records in them.
    ``cross_split``: groups with a train image and a held-out (val or test) image, the
    leakage that inflates test scores; ``cross_any_split`` adds groups that only span val
    and test (a milder leak, through model selection); ``split_pairs`` counts groups per pair
    of splits. ``cross_class``: groups whose
    copies carry different labels (label noise). ``cross_folder``: groups spanning split
    folders (``None`` without a folder view). ``examples``: the first groups, leaks first.
    """
    groups: dict[bytes, dict[str, tuple[str, int]]] = defaultdict(dict)
    file_hashes: dict[str, bytes] = {}
    hashed = 0
    for split, records in splits.items():
        for r in records:
            digest = content_hash(r, file_hashes)
            if digest is None:
                continue
            hashed += 1
            groups[digest][r.key] = (split, r.label)
    dup = [members for members in groups.values() if len(members) >= 2]
    dup.sort(key=lambda m: min(m))
    pairs: dict[str, int] = defaultdict(int)
    cross_split = cross_any = cross_class = either = cross_folder = 0
    summaries = []
    for members in dup:
        split_set = {s for s, _ in members.values()}
        label_set = {lab for _, lab in members.values()}
        leak = "train" in split_set and len(split_set) > 1
        noisy = len(label_set) > 1
        cross_split += leak
        cross_any += len(split_set) > 1
        cross_class += noisy
        either += leak or noisy
        for a, b in _pairs(split_set):
            pairs[f"{a}/{b}"] += 1
        if folder_of:
            cross_folder += len({folder_of[k] for k in members}) > 1
        summaries.append((not (leak or noisy), members))
    examples = [_example(m) for _, m in sorted(summaries, key=lambda s: s[0])[:MAX_EXAMPLES]]
    return {
        "hashed": hashed,
        "method": "blake2b of file bytes (CSV rows: of the pixel string)",
        "groups": len(dup),
        "files": sum(len(m) for m in dup),
        "cross_split": cross_split,
        "cross_any_split": cross_any,
        "cross_class": cross_class,
        "cross_split_or_class": either,
        "cross_folder": cross_folder if folder_of else None,
        "split_pairs": dict(sorted(pairs.items())),
        "examples": examples,
    }


def _pairs(split_set: set[str]) -> list[tuple[str, str]]:
    order = [s for s in SPLITS if s in split_set] + sorted(split_set - set(SPLITS))
    return [(a, b) for i, a in enumerate(order) for b in order[i + 1 :]]


def _example(members: dict[str, tuple[str, int]]) -> dict[str, Any]:
    keys = sorted(members)
    return {
        "files": keys,
        "splits": [members[k][0] for k in keys],
        "classes": [CANONICAL[members[k][1]] for k in keys],
    }


# --------------------------------------------------------------------------- output


def format_inspection(report: dict[str, Any]) -> str:
    """The report as console text: a class x split table, then bad files and duplicates."""
    lines = [
        f"Dataset {report['dataset']} at {report['root']}",
        f"Protocol: {report['protocol']}",
        "",
    ]
    lines += _table(report["splits"], report["labels"], "class", with_ratio=True)
    if report.get("folders"):
        lines += ["", "By split folder:"]
        lines += _table(report["folders"], report["labels"], "class", with_ratio=False)
    lines.append("")
    bad = report["bad_files"]
    lines.append(f"Bad files: {len(bad)}" + (" (left out of the counts above)" if bad else ""))
    lines += [f"  {b['path']}: {b['reason']}" for b in bad[:20]]
    if len(bad) > 20:
        lines.append(f"  ... and {len(bad) - 20} more (see the JSON report)")
    for reason, n in report.get("excluded", {}).items():
        lines.append(f"Excluded: {n:,} ({reason})")
    ignored = report.get("ignored") or {}
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in ignored.items())
    lines.append(
        f"Ignored (not part of the dataset): {sum(ignored.values()):,}"
        + (f" ({kinds})" if kinds else "")
    )
    lines += _duplicate_lines(report["duplicates"], str(report["root"]))
    return "\n".join(lines)


def _table(
    counts: dict[str, dict[str, Any]], labels: Sequence[str], head: str, *, with_ratio: bool
) -> list[str]:
    cols = list(counts)
    width = max([len(head), len("imbalance"), *(len(n) for n in labels)])
    cw = max([7, *(len(c) + 1 for c in cols)])
    row = lambda name, vals: f"{name:<{width}}" + "".join(f"{v:>{cw}}" for v in vals)  # noqa: E731
    out = [row(head, cols)]
    out += [row(n, [f"{counts[c]['per_class'].get(n, 0):,}" for c in cols]) for n in labels]
    out.append(row("total", [f"{counts[c]['total']:,}" for c in cols]))
    if with_ratio:
        ratios = [counts[c].get("imbalance_ratio") for c in cols]
        out.append(row("imbalance", ["inf" if r is None else f"{r:.1f}" for r in ratios]))
    return out


def _duplicate_lines(dup: dict[str, Any], root: str) -> list[str]:
    lines = [
        f"Exact duplicates: {dup['groups']:,} groups ({dup['files']:,} files) among "
        f"{dup['hashed']:,} hashed images",
        f"  across train and val/test (leakage): {dup['cross_split']:,}"
        f" (any two splits: {dup['cross_any_split']:,})",
        f"  across classes (label noise): {dup['cross_class']:,}",
        f"  either: {dup['cross_split_or_class']:,}",
    ]
    if dup.get("split_pairs"):
        pairs = ", ".join(f"{k} {v:,}" for k, v in dup["split_pairs"].items())
        lines.append(f"  groups per split pair: {pairs}")
    if dup.get("cross_folder") is not None:
        lines.append(f"  across split folders: {dup['cross_folder']:,}")
    for ex in dup.get("examples", [])[:5]:
        files = ", ".join(
            f"{_short(f, root)} [{s}, {c}]"
            for f, s, c in zip(ex["files"], ex["splits"], ex["classes"], strict=True)
        )
        lines.append(f"  e.g. {files}")
    return lines


def _short(path: str, root: str) -> str:
    """A path relative to the dataset root, for the console."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if root and path.startswith(prefix) else path


def distribution_counts(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """{split: {class: n}} from a report, for ``plot_distribution``."""
    return {split: dict(info["per_class"]) for split, info in report["splits"].items()}


def write_inspection_outputs(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``<dataset>_inspect.json`` and ``<dataset>_distribution.png`` into ``out_dir``."""
    from ferlab.reporting.distribution import plot_distribution  # lazy: matplotlib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = display_name(str(report["dataset"]), str(report["root"]))  # as the loader names it
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "dataset"
    json_path = out / f"{stem}_inspect.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(json_path)
    png_path = out / f"{stem}_distribution.png"
    total = sum(info["total"] for info in report["splits"].values())
    plot_distribution(
        distribution_counts(report),
        png_path,
        title=f"{report['dataset']}: class distribution ({total:,} images)",
    )
    return [json_path, png_path]
