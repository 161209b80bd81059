"""Built-in dataset adapters; importing this package registers them all."""

from ferlab.data.adapters import (  # noqa: F401
    affectnet,
    expw,
    fer2013,
    ferplus,
    folder,
    rafdb,
    synthetic,
)
