"""PEP 562 lazy attributes for a package's ``__init__``: a name is imported from its submodule on
first use, so importing the package stays cheap (a ``--no-update`` search must not pay for the
folder scan, the writer or the thumbnails)."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_attributes(package: str, table: dict[str, str], namespace: dict,
                    listed: list[str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``table`` maps a name to the submodule
    (relative to the package) that defines it; a resolved name is cached in ``namespace``."""

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(listed) | set(namespace))

    return __getattr__, __dir__
