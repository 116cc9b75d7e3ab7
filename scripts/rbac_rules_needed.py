#!/usr/bin/env python
"""Show that every rule of the shipped operator RBAC is needed: for each rule, install the RBAC
without it and run the least-privilege test of the real-API-server tier (which must then fail).

    .venv/bin/python scripts/rbac_rules_needed.py [RBAC_FILE] [RULE_INDEX ...]

Needs ../shared/k8s (the tier's fixtures start it). Prints one line per rule; exits 1 when the
test still passes without some rule (that rule is not needed: remove it, or test what needs it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/cluster/test_cluster_operator.py"


def main(argv: list[str]) -> int:
    files = [a for a in argv if not a.isdigit()]
    only = {int(a) for a in argv if a.isdigit()}
    rbac = Path(files[0]) if files else ROOT / "manifests/install/rbac.yaml"
    docs = list(yaml.safe_load_all(rbac.read_text()))
    role = next(d for d in docs if d and d["kind"] in ("ClusterRole", "Role"))
    unneeded = 0
    for i, rule in enumerate(role["rules"]):
        if only and i not in only:
            continue
        variant = yaml.safe_load_all(rbac.read_text())
        variant = [d for d in variant if d]
        for d in variant:
            if d["kind"] == role["kind"] and d["metadata"]["name"] == role["metadata"]["name"]:
                d["rules"] = [r for j, r in enumerate(role["rules"]) if j != i]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump_all(variant, f)
        env = {**os.environ, "MODELOPS_TEST_RBAC": f.name}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               TEST, "-k", "least_privilege"], cwd=ROOT, env=env, capture_output=True, text=True)
        needed = proc.returncode != 0
        unneeded += not needed
        print(f"rule {i} {rule.get('apiGroups')} {rule['resources']} {rule['verbs']}: "
              f"{'needed (the test fails without it)' if needed else 'NOT NEEDED (the test passes without it)'}",
              flush=True)
        os.unlink(f.name)
    return 1 if unneeded else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
