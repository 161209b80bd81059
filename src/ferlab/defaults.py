"""ferlab's defaults, one home each: the config's fields, the functions' keyword defaults and
the command line's options all read them from here.

No imports from ferlab: every layer may import this module.
"""

from __future__ import annotations

CACHE_DIR = "~/.cache/ferlab"  # decoded datasets (data.cache_dir) and the CPU kernel probes
SPLIT_SEED = 0  # seeds the split of a dataset that has no official one
VAL_FRACTION = 0.1  # share of a dataset's training images held out for validation, when split
TEST_FRACTION = 0.1  # share held out for test, when the dataset has no test split
FACE_MARGIN = 0.2  # a detected face box grows by this share of its size on each side
