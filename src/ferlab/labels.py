"""The canonical label space and the maps from every dataset's native labels into it.

Every adapter turns its labels into canonical indices (positions in ``CANONICAL``). A model's
output order is the order of its own ``labels`` list (a subset of ``CANONICAL`` kept in
canonical order), saved with its weights.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
CONTEMPT = "contempt"
CANONICAL: tuple[str, ...] = (*EMOTIONS, CONTEMPT)
INDEX: dict[str, int] = {name: i for i, name in enumerate(CANONICAL)}

# Folder and column names seen in FER releases, lower-cased, mapped to canonical names.
SYNONYMS: dict[str, str] = {
    **{name: name for name in CANONICAL},
    "anger": "angry",
    "angery": "angry",
    "mad": "angry",
    "an": "angry",
    "disgusted": "disgust",
    "disgusting": "disgust",
    "di": "disgust",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "fe": "fear",
    "happiness": "happy",
    "happy_face": "happy",
    "joy": "happy",
    "smile": "happy",
    "ha": "happy",
    "sadness": "sad",
    "unhappy": "sad",
    "sa": "sad",
    "surprised": "surprise",
    "suprise": "surprise",
    "surprize": "surprise",
    "su": "surprise",
    "neutrality": "neutral",
    "calm": "neutral",
    "ne": "neutral",
    "contemptuous": "contempt",
    "co": "contempt",
}

# Native integer labels of the datasets whose labels are numbers.
RAFDB_BASIC: dict[int, str] = {
    1: "surprise",
    2: "fear",
    3: "disgust",
    4: "happy",
    5: "sad",
    6: "angry",
    7: "neutral",
}
EXPW: dict[int, str] = dict(enumerate(EMOTIONS))
FER2013: dict[int, str] = dict(enumerate(EMOTIONS))
AFFECTNET: dict[int, str] = {
    0: "neutral",
    1: "happy",
    2: "sad",
    3: "surprise",
    4: "fear",
    5: "disgust",
    6: "angry",
    7: "contempt",
}
# FER+ label.csv vote columns, in file order, mapped to canonical names (None: not an emotion).
FERPLUS_COLUMNS: tuple[tuple[str, str | None], ...] = (
    ("neutral", "neutral"),
    ("happiness", "happy"),
    ("surprise", "surprise"),
    ("sadness", "sad"),
    ("anger", "angry"),
    ("disgust", "disgust"),
    ("fear", "fear"),
    ("contempt", "contempt"),
    ("unknown", None),
    ("NF", None),
)


class UnknownLabelError(ValueError):
    """A class name that no synonym maps to a canonical emotion."""


def canonical_name(name: str, *, where: str = "") -> str:
    """Map a folder or column name to its canonical emotion name.

    Raises ``UnknownLabelError`` naming the accepted names and the closest matches.
    """
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in SYNONYMS:
        return SYNONYMS[key]
    close = difflib.get_close_matches(key, list(SYNONYMS), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    place = f" in {where}" if where else ""
    raise UnknownLabelError(
        f"Unknown class name {name!r}{place}.{hint} Accepted names: "
        f"{', '.join(CANONICAL)} and the synonyms {', '.join(sorted(set(SYNONYMS) - set(CANONICAL)))}. "
        "Rename the folder to one of them, or pass a mapping with the dataset option "
        "`class_map: {your_name: canonical_name}`."
    )


def canonical_index(name: str, *, where: str = "") -> int:
    return INDEX[canonical_name(name, where=where)]


def ordered(names: Iterable[str]) -> list[str]:
    """Canonical names in canonical order, duplicates removed."""
    wanted = {canonical_name(n) for n in names}
    return [n for n in CANONICAL if n in wanted]


def shared_labels(a: Sequence[str], b: Sequence[str]) -> tuple[list[str], list[str]]:
    """Classes common to two label lists (canonical order) and those dropped from either."""
    common = [n for n in CANONICAL if n in a and n in b]
    dropped = [n for n in CANONICAL if (n in a) != (n in b)]
    return common, dropped
