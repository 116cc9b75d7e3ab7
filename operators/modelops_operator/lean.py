"""What the operator process leaves unloaded: pandas, pyarrow and scipy.

MLflow's client (`mlflow.tracking`) imports them through optional integrations only
(`mlflow.data.dataset_registry` registers its pandas dataset constructor under
`suppress(ImportError)`; `mlflow-skinny`, MLflow's own minimal client, ships without them). The
operator, converting in Jobs, reads the registry, writes tags and logs a JSON report and a PNG:
none of that touches them, and they cost ~75 MiB of its resident memory (issue 17: 1,000
ModelDeployments in <= 250 MiB). `run()` installs the finder below in the operator process in
job mode only (in-process conversion loads models, which may need pandas); the library and the
tests never get it. `MODELOPS_OPERATOR_LEAN=0` turns it off.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Mapping

UNLOADED = ("pandas", "pyarrow", "scipy")


class Unloaded(importlib.abc.MetaPathFinder):
    """Answers an import of an `UNLOADED` package with ModuleNotFoundError, saying why."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in UNLOADED:
            raise ModuleNotFoundError(
                f"{fullname} is not loaded in the operator process (job mode keeps MLflow's client lean); "
                "set MODELOPS_OPERATOR_LEAN=0 to allow it", name=fullname)
        return None


def install(env: Mapping[str, str], conversion: str) -> bool:
    """Leave `UNLOADED` out of this process, if it converts in Jobs and none is loaded yet."""
    if env.get("MODELOPS_OPERATOR_LEAN", "1") == "0" or conversion != "job":
        return False
    if any(name in sys.modules for name in UNLOADED) or any(isinstance(f, Unloaded) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, Unloaded())
    return True


__all__ = ["UNLOADED", "Unloaded", "install"]
