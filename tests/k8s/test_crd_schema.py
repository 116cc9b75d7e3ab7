"""The ModelDeployment CRD: generated from one source, structural, 1.25-safe, and strict.

Malformed objects are validated against the generated CRD file's openAPIV3Schema (jsonschema)
and its CEL rules (evaluated with cel-python), as the API server would reject them.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import yaml

from modelops.deployment import crd, schema
from modelops.deployment.spec import parse_spec
from modelops.errors import InvalidSpec

from .schemas import REPO_ROOT, all_errors, cel_errors, eval_rule, load_crd, version_schema, walk_schema

CRD_FILE = REPO_ROOT / "manifests/crds/modeldeployments.modelops.dev.yaml"
HELM_CRD_FILE = REPO_ROOT / "helm/modelops/files/crds/modeldeployments.modelops.dev.yaml"


@pytest.fixture(scope="module")
def md_schema() -> dict:
    return version_schema(load_crd(CRD_FILE), "v1alpha1")


def valid_md() -> dict:
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "ml"},
        "spec": {
            "model": {"name": "fraud-detector", "alias": "champion"},
            "registry": {"trackingUri": "http://mlflow.mlflow:5000"},
            "conversion": {"precision": "fp16", "opset": 17, "tolerance": {"rtol": 0.01, "atol": 0.001}},
            "predictor": {"gpu": 1, "minReplicas": 1, "maxReplicas": 3,
                          "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
                          "nodeSelector": {"gpu": "a100"},
                          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                           "effect": "NoSchedule"}]},
            "rollout": {
                "strategy": "canary", "steps": [10, 50, 100], "interval": "60s", "paused": False,
                "promoteAlias": "production", "allowInterfaceChange": False,
                "analysis": {
                    "successRate": {"min": 0.99, "maxDrop": 0.01},
                    "clientErrors": {"maxIncrease": 0.02},
                    "p99LatencyMs": {"max": 250.0, "maxRatio": 1.2},
                    "minRequests": 20, "failureLimit": 2, "inconclusiveLimit": 3,
                    "prometheusUrl": "http://prometheus.monitoring:9090",
                    "checks": [{"name": "gpu-util", "query": "avg(gpu_util{model=\"$model\"})",
                                "min": 0.1, "max": 0.95}],
                },
            },
            "hooks": {
                "webhooks": [{"name": "slack", "url": "https://hooks.example/modelops",
                              "events": ["Started", "Promoted", "RolledBack"],
                              "secretRef": {"name": "hook-secret", "key": "hmac"}}],
                "gates": [{"name": "qa", "url": "http://qa.ml:8080/approve", "type": "confirmPromotion"}],
            },
        },
    }


def test_generated_files_equal_the_source():
    assert load_crd(CRD_FILE) == crd.crd()
    assert HELM_CRD_FILE.read_text() == CRD_FILE.read_text()
    check = subprocess.run([sys.executable, str(REPO_ROOT / "scripts/gen_crd.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_crd_identity_printer_columns_and_status_subresource():
    obj = load_crd(CRD_FILE)
    assert obj["metadata"]["name"] == "modeldeployments.modelops.dev"
    names = obj["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("ModelDeployment", "modeldeployments", ["md"])
    assert obj["spec"]["scope"] == "Namespaced"
    (version,) = obj["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Model", "Version", "Canary", "Phase", "Canary %", "Ready", "Age"]


def test_schema_is_structural(md_schema):
    """Every node has a type (or is int-or-string), as apiextensions/v1 requires."""
    for path, node in walk_schema(md_schema):
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "type" in node, f"no type at {path}"
        assert "$ref" not in node and "oneOf" not in node, path


def test_cel_rules_are_kubernetes_1_25_safe(md_schema):
    """Only rule/message keys (fieldPath, reason, messageExpression came after 1.25), no has() != has(),
    and bounded sizes wherever a rule iterates or matches (API server cost budget)."""
    rules = 0
    for path, node in walk_schema(md_schema):
        for rule in node.get("x-kubernetes-validations", []):
            rules += 1
            assert set(rule) <= {"rule", "message"}, (path, rule)
            assert not re.search(r"has\([^)]*\)\s*[!=]=\s*!?has\(", rule["rule"]), rule
            if node.get("type") == "array":
                assert "maxItems" in node, path
            if node.get("type") == "string":
                assert "maxLength" in node, path
    assert rules >= 5


def test_valid_example_passes(md_schema):
    assert all_errors(valid_md(), md_schema) == []


def test_examples_validate_and_parse(md_schema):
    examples = sorted((REPO_ROOT / "manifests/examples").glob("*.yaml"))
    assert len(examples) >= 2
    kinds = set()
    for path in examples:
        doc = yaml.safe_load(path.read_text())
        assert all_errors(doc, md_schema) == [], path
        spec = parse_spec(doc["spec"])
        kinds.add(("alias-gpu" if spec.model.alias and spec.predictor.gpu > 0 else
                   "pinned-cpu" if spec.model.version and spec.predictor.gpu == 0 else "other"))
    assert {"alias-gpu", "pinned-cpu"} <= kinds


def _set(obj: dict, path: str, value):
    keys = path.split(".")
    node = obj
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is _DELETE:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value


_DELETE = object()

# (case id, field path to change, new value, the field that must be named)
MALFORMED = [
    ("missing-spec", "spec", _DELETE, "spec"),
    ("missing-model", "spec.model", _DELETE, "model"),
    ("missing-model-name", "spec.model.name", _DELETE, "name"),
    ("empty-model-name", "spec.model.name", "", "spec.model.name"),
    ("both-version-and-alias", "spec.model.version", "3", "spec.model"),
    ("neither-version-nor-alias", "spec.model.alias", _DELETE, "spec.model"),
    ("version-not-a-number", "spec.model.version", "three", "spec.model.version"),
    ("alias-latest", "spec.model.alias", "latest", "spec.model.alias"),
    ("alias-bad-characters", "spec.model.alias", "cham pion!", "spec.model.alias"),
    ("unknown-precision", "spec.conversion.precision", "fp8", "spec.conversion.precision"),
    ("opset-too-low", "spec.conversion.opset", 3, "spec.conversion.opset"),
    ("negative-rtol", "spec.conversion.tolerance.rtol", -0.1, "spec.conversion.tolerance.rtol"),
    ("negative-gpu", "spec.predictor.gpu", -1, "spec.predictor.gpu"),
    ("gpu-not-integer", "spec.predictor.gpu", "one", "spec.predictor.gpu"),
    ("max-replicas-zero", "spec.predictor.maxReplicas", 0, "spec.predictor.maxReplicas"),
    ("min-over-max-replicas", "spec.predictor.minReplicas", 5, "spec.predictor"),
    ("bad-quantity", "spec.predictor.resources.requests", {"memory": "lots"}, "spec.predictor.resources.requests.memory"),
    ("bad-toleration-operator", "spec.predictor.tolerations", [{"key": "a", "operator": "Maybe"}],
     "spec.predictor.tolerations[0].operator"),
    ("tracking-uri-not-http", "spec.registry.trackingUri", "mlflow:5000", "spec.registry.trackingUri"),
    ("unknown-strategy", "spec.rollout.strategy", "bluegreen", "spec.rollout.strategy"),
    ("steps-decreasing", "spec.rollout.steps", [50, 10, 100], "spec.rollout.steps"),
    ("steps-repeated", "spec.rollout.steps", [10, 10, 100], "spec.rollout.steps"),
    ("steps-not-ending-at-100", "spec.rollout.steps", [10, 50], "spec.rollout.steps"),
    ("steps-empty", "spec.rollout.steps", [], "spec.rollout.steps"),
    ("step-over-100", "spec.rollout.steps", [10, 150], "spec.rollout.steps[1]"),
    ("too-many-steps", "spec.rollout.steps", list(range(1, 12)) + [100], "spec.rollout.steps"),
    ("bad-interval", "spec.rollout.interval", "soon", "spec.rollout.interval"),
    ("interval-without-unit", "spec.rollout.interval", "60", "spec.rollout.interval"),
    ("bad-deployment-mode", "spec.predictor.deploymentMode", "Serverless", "spec.predictor.deploymentMode"),
    ("unknown-auth", "spec.predictor.auth", "oidc", "spec.predictor.auth"),
    ("tls-without-secret", "spec.predictor.tls", {}, "spec.predictor.tls.secretName"),
    ("tls-bad-secret-name", "spec.predictor.tls", {"secretName": "Bad_Name"}, "spec.predictor.tls.secretName"),
    ("network-policy-no-peers", "spec.predictor.networkPolicy", {"from": []}, "spec.predictor.networkPolicy.from"),
    ("network-policy-empty-peer", "spec.predictor.networkPolicy", {"from": [{}]},
     "spec.predictor.networkPolicy.from[0]"),
    ("network-policy-bad-label", "spec.predictor.networkPolicy",
     {"from": [{"podSelector": {"matchLabels": {"app": 7}}}]},
     "spec.predictor.networkPolicy.from[0].podSelector.matchLabels.app"),
    ("paused-not-bool", "spec.rollout.paused", "yes", "spec.rollout.paused"),
    ("promote-alias-latest", "spec.rollout.promoteAlias", "latest", "spec.rollout.promoteAlias"),
    ("success-rate-over-1", "spec.rollout.analysis.successRate.min", 1.5, "spec.rollout.analysis.successRate.min"),
    ("client-errors-over-1", "spec.rollout.analysis.clientErrors.maxIncrease", 1.5,
     "spec.rollout.analysis.clientErrors.maxIncrease"),
    ("allow-interface-change-not-bool", "spec.rollout.allowInterfaceChange", "yes",
     "spec.rollout.allowInterfaceChange"),
    ("negative-max-drop", "spec.rollout.analysis.successRate.maxDrop", -0.1,
     "spec.rollout.analysis.successRate.maxDrop"),
    ("p99-ratio-below-1", "spec.rollout.analysis.p99LatencyMs.maxRatio", 0.5,
     "spec.rollout.analysis.p99LatencyMs.maxRatio"),
    ("negative-p99", "spec.rollout.analysis.p99LatencyMs.max", -1.0, "spec.rollout.analysis.p99LatencyMs.max"),
    ("failure-limit-zero", "spec.rollout.analysis.failureLimit", 0, "spec.rollout.analysis.failureLimit"),
    ("inconclusive-limit-zero", "spec.rollout.analysis.inconclusiveLimit", 0,
     "spec.rollout.analysis.inconclusiveLimit"),
    ("negative-min-requests", "spec.rollout.analysis.minRequests", -5, "spec.rollout.analysis.minRequests"),
    ("prometheus-url-not-http", "spec.rollout.analysis.prometheusUrl", "prom:9090",
     "spec.rollout.analysis.prometheusUrl"),
    ("check-without-bounds", "spec.rollout.analysis.checks", [{"name": "c", "query": "up"}],
     "spec.rollout.analysis.checks[0]"),
    ("check-min-over-max", "spec.rollout.analysis.checks", [{"name": "c", "query": "up", "min": 2.0, "max": 1.0}],
     "spec.rollout.analysis.checks[0]"),
    ("check-without-query", "spec.rollout.analysis.checks", [{"name": "c", "min": 1.0}],
     "spec.rollout.analysis.checks[0].query"),
    ("check-bad-name", "spec.rollout.analysis.checks", [{"name": "Bad Name", "query": "up", "min": 1.0}],
     "spec.rollout.analysis.checks[0].name"),
    ("check-names-repeated", "spec.rollout.analysis.checks",
     [{"name": "c", "query": "up", "min": 1.0}, {"name": "c", "query": "up", "max": 1.0}],
     "spec.rollout.analysis.checks"),
    ("webhook-bad-url", "spec.hooks.webhooks", [{"name": "w", "url": "ftp://x"}], "spec.hooks.webhooks[0].url"),
    ("webhook-unknown-event", "spec.hooks.webhooks", [{"name": "w", "url": "http://x", "events": ["Deleted"]}],
     "spec.hooks.webhooks[0].events[0]"),
    ("webhook-secret-without-key", "spec.hooks.webhooks",
     [{"name": "w", "url": "http://x", "secretRef": {"name": "s"}}], "spec.hooks.webhooks[0].secretRef.key"),
    ("webhook-names-repeated", "spec.hooks.webhooks",
     [{"name": "w", "url": "http://x"}, {"name": "w", "url": "http://y"}], "spec.hooks.webhooks"),
    ("gate-unknown-type", "spec.hooks.gates", [{"name": "g", "url": "http://x", "type": "postRollout"}],
     "spec.hooks.gates[0].type"),
    ("gate-without-type", "spec.hooks.gates", [{"name": "g", "url": "http://x"}], "spec.hooks.gates[0].type"),
]


@pytest.mark.parametrize("case,path,value,field", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_rejected_by_crd_naming_the_field(md_schema, case, path, value, field):
    obj = valid_md()
    if case == "neither-version-nor-alias":
        obj["spec"]["model"].pop("version", None)
    _set(obj, path, value if value is _DELETE else copy.deepcopy(value))
    errors = all_errors(obj, md_schema)
    assert errors, f"{case}: accepted"
    leaf = field.rsplit(".", 1)[-1]
    assert any(p == field or leaf in msg or p.startswith(field) for p, msg in errors), (case, errors)


@pytest.mark.parametrize("case,path,value,field", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_rejected_by_the_parser_too(case, path, value, field):
    """The operator's own parser agrees with the CRD (objects that skipped an API server)."""
    obj = valid_md()
    if case == "neither-version-nor-alias":
        obj["spec"]["model"].pop("version", None)
    _set(obj, path, value if value is _DELETE else copy.deepcopy(value))
    with pytest.raises(InvalidSpec) as info:
        parse_spec(obj.get("spec"))
    assert info.value.field.startswith(field.split("[")[0].rsplit(".", 1)[0]) or field in info.value.field


def test_cel_rules_evaluate_as_written():
    """The rule strings themselves, against cel-python (what the API server would compute)."""
    xor = "has(self.version) ? !has(self.alias) : has(self.alias)"
    assert eval_rule(xor, {"name": "m", "version": "1"})
    assert eval_rule(xor, {"name": "m", "alias": "a"})
    assert not eval_rule(xor, {"name": "m"})
    assert not eval_rule(xor, {"name": "m", "version": "1", "alias": "a"})
    steps = schema.SPEC_SCHEMA["properties"]["rollout"]["properties"]["steps"]
    ok = [[100], [10, 100], [1, 2, 3, 100]]
    bad = [[100, 10], [10, 10, 100], [10, 50], [50, 10, 100]]
    for value in ok:
        assert cel_errors(value, steps) == [], value
    for value in bad:
        assert cel_errors(value, steps), value


def test_status_canary_schema_matches_the_engine_state(md_schema):
    """Every field the rollout engine persists is in the CRD's status.canary (no pruning), and a
    full state validates against it."""
    from datetime import datetime, timezone

    from modelops.rollout import Phase, RolloutState
    from modelops.rollout.state import GateWait, Notification, PerformanceGateRecord, RolledBack, ShadowRecord

    from .schemas import schema_errors

    assert [p.value for p in Phase] == schema.ROLLOUT_PHASES
    t = datetime(2025, 1, 1, tzinfo=timezone.utc)
    state = RolloutState(
        phase=Phase.AWAITING_PROMOTION, stable_version="1", version="2", weight=100, step=2, failed_checks=1,
        inconclusive_checks=1, started_at=t, last_step_at=t, last_analysis_at=t, next_analysis_at=t,
        reason="GateClosed", message="m",
        analysis={"version": "2", "at": "2025-01-01T00:00:00Z", "outcome": "Passed", "message": "ok",
                  "checks": [{"name": "successRate", "outcome": "Passed", "value": 1.0, "message": ""}]},
        gate=GateWait("confirmPromotion", "2", t, False, "409"),
        rolled_back=RolledBack("3", 2, t, "AnalysisFailed", "successRate"), hook_seq=4, delivered={"a": 3},
        outbox=(Notification(4, "Promoted", "2", "1", 100, t, "Analysis", "m", None),),
        performance_gate=PerformanceGateRecord("2", 2, t, "Passed", None, "ok",
                                               {"requests": 800.0, "errors": 0.0, "throughputRps": 40.0,
                                                "p50Ms": 9.8, "p99Ms": 21.0},
                                               {"requests": 790.0, "errors": 0.0, "throughputRps": 39.5,
                                                "p50Ms": 9.9, "p99Ms": 22.0}, t),
        shadow=ShadowRecord("2", t, 10, "Failed", "agreement", "shadow failed",
                            {"comparisons": 120.0, "agreement": 0.5, "maxAbsDiff": 0.3}, t))
    raw = state.to_status()
    canary = md_schema["properties"]["status"]["properties"]["canary"]
    assert set(raw) <= set(canary["properties"]), set(raw) - set(canary["properties"])
    assert set(raw["outbox"][0]) <= set(canary["properties"]["outbox"]["items"]["properties"])
    for part in ("performanceGate", "shadow"):
        assert set(raw[part]) <= set(canary["properties"][part]["properties"]), part
    assert RolloutState.from_status(raw) == state
    assert schema_errors({"canary": raw}, md_schema["properties"]["status"]) == []


def test_every_status_field_the_operator_writes_is_in_the_schema():
    """The API server silently prunes unknown status fields: a canary's state must survive."""
    from modelops.deployment.facts import Inputs, Served, ServiceObservation
    from modelops.deployment.plan import plan_rollout

    served = Served("1", "s3://m/1", "s3://m/1", "a" * 64, "x")
    canary = Served("2", "s3://m/2", "s3://m/2", "b" * 64, "x")
    inputs = Inputs(generation=1, spec=parse_spec(valid_md()["spec"]), status={}, now="2025-01-01T00:00:00Z",
                    resolved_version="2", service=ServiceObservation("s3://m/1", True, "http://x"))
    status = plan_rollout(inputs, served, canary, {"phase": "Progressing", "weight": 10, "step": 0}).status
    props = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(status) <= set(props), set(status) - set(props)
    assert set(status["canaryModel"]) <= set(props["canaryModel"]["properties"])


# --- one schema: the parser validates against it, its CEL rules' twins agree -----------------------
def _rule_sites(obj, node, path=()):
    """(path, rule, self) of every CEL rule the schema applies to `obj`."""
    for rule in node.get("x-kubernetes-validations", []):
        yield path, rule["rule"], obj
    if isinstance(obj, dict):
        for key, value in obj.items():
            sub = node.get("properties", {}).get(key)
            if sub is not None:
                yield from _rule_sites(value, sub, path + (key,))
    elif isinstance(obj, list) and isinstance(node.get("items"), dict):
        for i, value in enumerate(obj):
            yield from _rule_sites(value, node["items"], path + (i,))


# Values beyond the malformed corpus, for each rule (its `self`).
EXTRA_RULE_VALUES = {
    "spec.model": [{"name": "m"}, {"name": "m", "version": "1"}, {"name": "m", "alias": "a"},
                   {"name": "m", "version": "1", "alias": "a"}],
    "spec.model.alias": ["latest", "v3", "V12", "champion", "v3a", "xv3", "latest2", "v"],
    "spec.rollout.promoteAlias": ["latest", "v3", "production", "v3-rc"],
    "spec.predictor": [{}, {"minReplicas": 2}, {"maxReplicas": 1}, {"minReplicas": 2, "maxReplicas": 1},
                       {"minReplicas": 1, "maxReplicas": 1}, {"minReplicas": 0, "maxReplicas": 3}],
    "spec.rollout.steps": [[100], [10, 100], [1, 2, 3, 100], [100, 10], [10, 10, 100], [10, 50], [],
                           [50, 10, 100], [100, 100], [5]],
    "spec.rollout.analysis.checks[0]": [{}, {"min": 1.0}, {"max": 1.0}, {"min": 2.0, "max": 1.0},
                                        {"min": 1.0, "max": 1.0}, {"min": -1.0, "max": 2.5}],
    "spec.rollout.analysis.checks": [[], [{"name": "a"}], [{"name": "a"}, {"name": "a"}],
                                     [{"name": "a"}, {"name": "b"}], [{"name": "a"}, {"name": "b"}, {"name": "a"}]],
}


def _corpus_sites():
    objs = [valid_md()]
    for case, path, value, _ in MALFORMED:
        obj = valid_md()
        if case == "neither-version-nor-alias":
            obj["spec"]["model"].pop("version", None)
        _set(obj, path, value if value is _DELETE else copy.deepcopy(value))
        objs.append(obj)
    objs += [yaml.safe_load(p.read_text()) for p in sorted((REPO_ROOT / "manifests/examples").glob("*.yaml"))]
    sites = [(".".join(map(str, p)), rule, value) for obj in objs
             for p, rule, value in _rule_sites(obj.get("spec"), schema.SPEC_SCHEMA, ("spec",))]
    for path, values in EXTRA_RULE_VALUES.items():
        node = schema.SPEC_SCHEMA
        for key in path.removeprefix("spec.").replace("[0]", "").split("."):
            while node.get("type") == "array":
                node = node["items"]
            node = node["properties"][key]
        if path.endswith("[0]"):
            node = node["items"]
        rules = [r["rule"] for r in node["x-kubernetes-validations"]]
        sites += [(path, rule, v) for rule in rules for v in values]
    return sites


def test_every_cel_rule_has_a_python_twin():
    rules = {r["rule"] for _, n in walk_schema(crd.open_api_schema())
             for r in n.get("x-kubernetes-validations", [])}
    assert rules and rules <= set(schema.CEL_TWINS), rules - set(schema.CEL_TWINS)


def test_python_twins_agree_with_cel_on_the_corpus():
    """The parser runs each rule's Python twin; cel-python evaluates the rule text as the API
    server would. Every rule, on every value the corpus gives it, gets the same verdict."""
    from modelops.deployment.validation import rule_holds

    sites = _corpus_sites()
    seen = {rule for _, rule, _ in sites}
    assert seen == set(schema.CEL_TWINS), set(schema.CEL_TWINS) - seen  # every rule is exercised
    verdicts = {True: 0, False: 0}
    for path, rule, value in sites:
        cel = eval_rule(rule, value)
        assert rule_holds(rule, value) == cel, (path, rule, value, cel)
        verdicts[cel] += 1
    assert verdicts[True] > 20 and verdicts[False] > 20, verdicts


def test_the_parser_follows_a_changed_schema(monkeypatch):
    """No limit, enum, default or rule is restated in the parser: change them in the schema and
    the parser follows (the same schema object the CRD is generated from)."""
    changed = copy.deepcopy(schema.SPEC_SCHEMA)
    spec = {"model": {"name": "m", "version": "1"}, "conversion": {"opset": 19}}
    assert parse_spec(spec).conversion.opset == 19
    schema.node("conversion.opset", changed)["maximum"] = 18
    schema.node("conversion.precision", changed)["enum"].append("fp8")
    schema.node("rollout.analysis.failureLimit", changed)["default"] = 7
    schema.node("rollout.steps", changed)["maxItems"] = 2
    schema.node("rollout.steps", changed)["x-kubernetes-validations"] = []  # no more "ends at 100"
    monkeypatch.setattr(schema, "SPEC_SCHEMA", changed)
    with pytest.raises(InvalidSpec, match=r"^spec.conversion.opset: must be between 7 and 18, got 19$"):
        parse_spec(spec)
    parsed = parse_spec({"model": {"name": "m", "version": "1"}, "conversion": {"precision": "fp8"},
                         "rollout": {"steps": [10, 50]}})
    assert (parsed.conversion.precision, parsed.rollout.analysis.failure_limit) == ("fp8", 7)
    assert parsed.rollout.steps == (10, 50)
    with pytest.raises(InvalidSpec, match=r"^spec.rollout.steps: must have at most 2 items, got 3$"):
        parse_spec({"model": {"name": "m", "version": "1"}, "rollout": {"steps": [10, 50, 100]}})


def test_dataclass_defaults_are_the_schema_defaults():
    """A minimal spec parses to exactly the dataclasses' defaults, which come from the schema."""
    from modelops.deployment.spec import DeploymentSpec, ModelRef, WebhookSpec

    assert parse_spec({"model": {"name": "m", "version": "1"}}) == DeploymentSpec(model=ModelRef("m", "1"))
    hooked = parse_spec({"model": {"name": "m", "version": "1"},
                         "hooks": {"webhooks": [{"name": "w", "url": "http://x"}]}})
    assert hooked.hooks.webhooks == (WebhookSpec("w", "http://x"),)
    assert hooked.hooks.webhooks[0].events == tuple(schema.HOOK_EVENTS)
    d = DeploymentSpec(model=ModelRef("m", "1"))
    assert (d.conversion.opset, d.rollout.analysis.failure_limit, d.rollout.steps) == (
        schema.default("conversion.opset"), schema.default("rollout.analysis.failureLimit"),
        tuple(schema.default("rollout.steps")))


def test_enums_are_defined_once():
    from modelops.deployment.plan import ACTIVE_ROLLOUT_PHASES
    from modelops.rollout import EVENTS, Phase
    from modelops.rollout.state import GATE_TYPES

    assert EVENTS == tuple(schema.HOOK_EVENTS) and GATE_TYPES == tuple(schema.GATE_TYPES)
    assert [p.value for p in Phase if p.active] == schema.ACTIVE_ROLLOUT_PHASES == list(ACTIVE_ROLLOUT_PHASES)
    assert schema.node("hooks.webhooks.events")["items"]["enum"] is schema.HOOK_EVENTS
    assert schema.node("hooks.gates.type")["enum"] is schema.GATE_TYPES


@pytest.mark.parametrize("spec,message", [
    ({"model": {"version": "1"}}, "spec.model.name: is required"),
    ({"model": {"name": "m", "version": "1"}, "conversion": {"opset": 3}},
     "spec.conversion.opset: must be between 7 and 23, got 3"),
    ({"model": {"name": "m", "version": "1"}, "predictor": {"gpu": "one"}},
     "spec.predictor.gpu: must be an integer, got 'one'"),
    ({"model": {"name": "m", "version": "1"}, "predictor": {"gpu": True}},
     "spec.predictor.gpu: must be an integer, got True"),
    ({"model": {"name": "m", "version": "1"}, "conversion": {"precision": "fp8"}},
     "spec.conversion.precision: must be one of fp32, fp16, int8, got 'fp8'"),
    ({"model": {"name": "m", "version": "1"}, "rollout": {"interval": "soon"}},
     "spec.rollout.interval: 'soon' is not a duration such as 60s, 5m or 1h30m"),
    ({"model": {"name": "m", "version": "1"}, "rollout": {"steps": [10, 50]}},
     "spec.rollout.steps: rollout.steps must end at 100"),
    ({"model": {"name": "m", "version": "1"}, "rollout": "canary"},
     "spec.rollout: must be an object, got 'canary'"),
    ({"model": {"name": "m", "version": "1"}, "predictor": {"resources": {"requests": {"memory": "lots"}}}},
     "spec.predictor.resources.requests.memory: 'lots' is not a Kubernetes quantity"),
    ({"model": {"name": "m", "version": "1"}, "hooks": {"webhooks": [{"name": "w", "url": "http://x",
                                                                      "secretRef": {"name": "s"}}]}},
     "spec.hooks.webhooks[0].secretRef.key: is required"),
    # As the API server: maxReplicas defaults to 1 before the rules run.
    ({"model": {"name": "m", "version": "1"}, "predictor": {"minReplicas": 3}},
     "spec.predictor: predictor.minReplicas must not exceed predictor.maxReplicas"),
    ([], "spec: must be an object, got list"),
])
def test_parser_messages_name_the_field(spec, message):
    with pytest.raises(InvalidSpec) as info:
        parse_spec(spec)
    assert str(info.value) == message


def test_nulls_dropped_unquoted_version_read_and_input_untouched():
    raw = {"model": {"name": "m", "version": 3}, "rollout": None, "hooks": {"webhooks": None},
           "predictor": {"resources": {"requests": {"cpu": 2}}}}
    before = copy.deepcopy(raw)
    spec = parse_spec(raw)
    assert raw == before
    assert spec.model.version == "3" and spec.rollout.steps == (10, 50, 100) and spec.hooks.webhooks == ()
    assert spec.predictor.requests == {"cpu": "2"}
