"""Names a package imports on first use (PEP 562), so importing it stays cheap and free of
import cycles: ``ferlab`` and ``ferlab.data`` export this way."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_getattr(
    package: str, namespace: dict[str, Any], exports: dict[str, str]
) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``exports`` maps a name to the module that
    defines it; the first access imports it and caches it in ``namespace`` (the globals)."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
