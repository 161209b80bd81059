"""Built-in dataset adapters; importing this package registers them all."""

from ferlab.data import synthetic  # noqa: F401
from ferlab.data.adapters import affectnet, expw, fer2013, ferplus, folder, rafdb  # noqa: F401
