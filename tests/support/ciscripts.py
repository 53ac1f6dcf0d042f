"""The scripts under .ci/ that are also tested (release tooling), imported by path: .ci is no
package, and the release workflow runs them as plain files."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Final

from . import REPO

CI: Final = REPO / ".ci"


def load(name: str) -> ModuleType:
    """Import .ci/<name>.py once, as module `ci_<name>`."""
    module_name = f"ci_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, CI / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses look their module up while the class is made.
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
