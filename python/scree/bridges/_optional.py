"""The optional packages a bridge needs (pyarrow, awkward), imported when the bridge is called so
that `import scree` never imports them; missing, they raise scree.UnsupportedError saying what to
install."""

from __future__ import annotations

import importlib
from types import ModuleType

from scree._errors import UnsupportedError


def optional_module(name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise UnsupportedError(f"{what} needs {name} (pip install {name})") from e
