"""flowscope's C extension, ``flowscope.core.ipfix._speedups``, when it was built.

Each of its parts has a Python twin, used when the extension is missing (no compiler when flowscope
was installed) or ``FLOWSCOPE_PURE_PYTHON`` is set.
"""

from __future__ import annotations

import os
from types import ModuleType

module: ModuleType | None
try:
    from flowscope.core.ipfix import _speedups as module
except ImportError:  # not compiled: the Python twins do the work
    module = None


def wanted() -> bool:
    """Whether to use the C parts: they were built and ``FLOWSCOPE_PURE_PYTHON`` is unset."""
    return module is not None and not os.environ.get("FLOWSCOPE_PURE_PYTHON")
