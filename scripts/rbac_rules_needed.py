#!/usr/bin/env python
"""Show that every rule of the shipped operator RBAC is needed: for each rule, install the RBAC
without it and run the least-privilege test of the real-API-server tier (which must then fail).

    .venv/bin/python scripts/rbac_rules_needed.py [RBAC_FILE] [RULE_INDEX ...]
    .venv/bin/python scripts/rbac_rules_needed.py --predictor-access

`--predictor-access`: the rules the Helm chart adds with `predictorAccess.enabled` (the
predictor ServiceAccount, the NetworkPolicy, the auth-delegator binding and the right to bind
it), each dropped in turn from the chart's rendered RBAC, against the predictor-access test.

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


PREDICTOR_ACCESS_TEST = "tests/cluster/test_cluster_predictor_access.py"
PREDICTOR_ACCESS_RULES = {"serviceaccounts", "networkpolicies", "clusterrolebindings", "clusterroles"}


def predictor_access() -> int:
    """Each predictor-access rule of the chart dropped in turn (MODELOPS_TEST_DROP_RULE)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import render_manifests

    objs = render_manifests.render({"operator": {"namespaces": ["ns"]}, "predictorAccess": {"enabled": True}})
    unneeded = 0
    for obj in objs:
        if obj["kind"] not in ("Role", "ClusterRole"):
            continue
        suffix = obj["metadata"]["name"].split("-", 1)[-1]
        for i, rule in enumerate(obj.get("rules") or []):
            if not PREDICTOR_ACCESS_RULES & set(rule.get("resources", [])):
                continue
            env = {**os.environ, "MODELOPS_TEST_DROP_RULE": f"{obj['kind']}/{suffix}/{i}"}
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                   PREDICTOR_ACCESS_TEST], cwd=ROOT, env=env, capture_output=True, text=True)
            needed = proc.returncode != 0
            unneeded += not needed
            print(f"{obj['kind']} {obj['metadata']['name']} rule {i} {rule['resources']} {rule['verbs']}: "
                  f"{'needed (the test fails without it)' if needed else 'NOT NEEDED (the test passes without it)'}",
                  flush=True)
    return 1 if unneeded else 0


def main(argv: list[str]) -> int:
    if "--predictor-access" in argv:
        return predictor_access()
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
