"""The one switch between flowscope's C extensions and their Python twins.

Each C extension sits beside the module it speeds up (the IPFIX decoder beside the codec, the flow
table beside the flow table, ...) and has a Python twin that gives the same results. The twin is
used when the extension was not built (no compiler when flowscope was installed) or
``FLOWSCOPE_PURE_PYTHON`` is set.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_PYTHON_ENV = "FLOWSCOPE_PURE_PYTHON"


def built(name: str) -> ModuleType | None:
    """The C extension ``name`` (a full module name), or ``None`` when it was not built."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def wanted(extension: ModuleType | None) -> bool:
    """Whether to use ``extension``: it was built and ``FLOWSCOPE_PURE_PYTHON`` is unset."""
    return extension is not None and not os.environ.get(PURE_PYTHON_ENV)
