"""Faces in photos: find them (Haar cascade, MTCNN or none) and crop them to one framing.

``make_detector(name)`` gives a ``Detector`` whose ``detect(rgb)`` lists every ``Face`` in an
(H, W, 3) uint8 image, largest first; ``crop_face(rgb, face)`` cuts the face out with a margin,
square, padded with edge pixels where it runs past the border, and (``align=True``) rotated so
the eyes are level. ``ferlab predict`` uses both on photos and video frames; the data layer
uses them at decode time (``data.face_crop``) so that every dataset has the same framing.

Both detectors run offline: the Haar cascade ships inside ``opencv-python-headless<5`` and the
MTCNN weights inside the ``facenet-pytorch==2.5.3`` wheel (``pip install 'ferlab[face]'``).
Importing this package is light: OpenCV, torch and facenet_pytorch are imported when a
detector is made.

>>> import numpy as np
>>> from ferlab.face import crop_face, make_detector
>>> photo = np.zeros((120, 160, 3), dtype=np.uint8)
>>> [face] = make_detector("none").detect(photo)  # "none": the whole image is the face
>>> face.box
(0.0, 0.0, 160.0, 120.0)
>>> crop_face(photo, face, margin=0.0).shape  # made square around the centre, edge-padded
(160, 160, 3)
"""

from ferlab.face.crop import crop_face
from ferlab.face.detectors import (
    DETECTORS,
    INSTALL_HINT,
    Detector,
    Face,
    FaceToolsMissing,
    detector_available,
    detector_settings,
    largest_face,
    make_detector,
)

__all__ = [
    "DETECTORS",
    "INSTALL_HINT",
    "Detector",
    "Face",
    "FaceToolsMissing",
    "crop_face",
    "detector_available",
    "detector_settings",
    "largest_face",
    "make_detector",
]
