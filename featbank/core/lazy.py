"""Lazy re-exports for package ``__init__`` files (PEP 562), as scikit-learn and SciPy do.

A package lists its public names and the module each lives in; importing the
package costs nothing, and a name loads its module on first use. Stage packages
that need torch stay cheap to import this way.
"""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the
    submodule (relative to ``package``) that defines it."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
