"""Package attributes imported on first use (PEP 562), so ``medtransfer --help`` or ``results`` never pays for
torch, Lightning or MONAI that only training needs."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_attributes(package: str, where: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that imports ``where[name]`` (a submodule of ``package``) when ``name`` is first read."""

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return __getattr__
