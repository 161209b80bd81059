"""A fake face detector for tests that need faces at known places (shared, not imported from
another test file)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ferlab.face import Face


class BrightSquare:
    """The face is the bounding box of the pixels above 200 in the first channel (none: no
    face). Named ``haar`` so that it stands in for the Haar cascade."""

    name = "haar"

    def detect(self, rgb: np.ndarray) -> list[Face]:
        grey = np.asarray(rgb)
        grey = grey if grey.ndim == 2 else grey[:, :, 0]
        ys, xs = np.nonzero(grey > 200)
        if len(xs) == 0:
            return []
        return [Face((float(xs.min()), float(ys.min()), xs.max() + 1.0, ys.max() + 1.0), None)]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        return [self.detect(im) for im in images]
