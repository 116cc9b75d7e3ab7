"""The README's main command: `modelops demo` tells the story of a rollout that judges the model:
a good version promoted (gate, shadow, steps), an erroring one rolled back in shadow (its 500s
disagree with the stable's answers) without a single client error, a silently wrong one rolled
back in shadow without a single client answer, a slow one stopped by its performance gate at
weight 0.

It runs as a user runs it (its own MLflow server, its own models, `modelops local up` in a child
process), with a shorter interval than its default to keep the suite quick; its output (events, the
final table), its JSON summary (`--json`: the client's own count of answers per version, the
highest weight each version was seen at) and the status document it leaves behind are checked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest


def _row(table: str, version: str) -> str:
    """The first line of VERSION's row in the final table."""
    m = re.search(rf"^\s*v{version}\s.*$", table, re.M)
    assert m, (version, table)
    return m.group(0)


def test_demo_tells_the_story(tmp_path):
    work, summary = tmp_path / "demo", tmp_path / "summary.json"
    r = subprocess.run([sys.executable, "-m", "modelops.cli", "demo", "--work-dir", str(work), "--interval", "2s",
                        "--json", str(summary)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-3000:]
    check_story(r.stdout, json.loads(summary.read_text()), work)


def check_story(out: str, doc: dict, work) -> None:
    """What `modelops demo` must show: OUT its output, DOC its JSON summary, WORK its work dir."""
    for step in ("[1/7]", "[2/7]", "[3/7]", "[4/7]", "[5/7]", "[6/7]", "[7/7]"):
        assert step in out
    assert doc["ok"] is True
    v = doc["versions"]
    assert list(v) == ["1", "2", "3", "4", "5"]

    # v2 (good): gate, shadow, then every step, promoted.
    assert "PerformanceGatePassed: v2 performance gate passed" in out
    assert "ShadowPassed: v2 shadow passed" in out
    assert "Started: canary v2 started at 20% against stable v1" in out
    assert "StepAdvanced: canary v2 at 100% (step 3/3)" in out
    assert "Promoted: v2 passed every step: promoted" in out
    assert v["2"]["outcome"] == "promoted" and v["2"]["analyses_passed"] == 3 and v["2"]["max_weight"] == 100
    assert v["2"]["gate"]["outcome"] == "Passed" and v["2"]["shadow"]["outcome"] == "Passed"
    assert v["2"]["shadow"]["agreement"] == 1.0

    # v3 (erroring): the copies it fails (500, one input in five) disagree: rolled back in shadow,
    # before any weight moved, no client request got its errors.
    assert (v["3"]["reason"], v["3"]["phase"], v["3"]["check"]) == ("ShadowFailed", "shadow", "agreement")
    assert v["3"]["client_answers"] == v["3"]["client_errors"] == v["3"]["max_weight"] == 0
    assert v["3"]["shadow"]["outcome"] == "Failed" and v["3"]["shadow"]["comparisons"] >= 30
    assert 0.5 < v["3"]["shadow"]["agreement"] < 0.99  # its answers to the other four in five agree
    mine = [json.loads(x) for x in (work / "local" / "events.jsonl").read_text().splitlines()]
    assert not any(e["kind"] in ("Started", "StepAdvanced") for e in mine if e.get("version") == "3")

    # v4 (silently wrong): rolled back in shadow, not one client request answered by it.
    assert "ShadowFailed: shadow failed: agreement" in out
    assert v["4"]["outcome"] == "rolled back in shadow"
    assert (v["4"]["reason"], v["4"]["phase"], v["4"]["check"]) == ("ShadowFailed", "shadow", "agreement")
    assert v["4"]["client_answers"] == 0 and v["4"]["client_errors"] == 0 and v["4"]["max_weight"] == 0
    assert v["4"]["shadow"]["outcome"] == "Failed" and v["4"]["shadow"]["agreement"] < 0.99
    assert v["4"]["shadow"]["comparisons"] >= 30
    assert doc["client"]["answered"].get("4", 0) == 0

    # v5 (slow): stopped by its performance gate, weight 0 throughout.
    assert v["5"]["outcome"] == "stopped by the gate"
    assert (v["5"]["reason"], v["5"]["phase"]) == ("PerformanceGateFailed", "performanceGate")
    assert v["5"]["check"] in ("minThroughputRatio", "maxP99Ms")
    assert v["5"]["client_answers"] == 0 and v["5"]["max_weight"] == 0
    assert v["5"]["gate"]["outcome"] == "Failed" and v["5"]["gate"]["throughputRatio"] < 0.3
    events = [json.loads(x) for x in (work / "local" / "events.jsonl").read_text().splitlines()]
    mine = [e for e in events if e.get("version") == "5"]
    assert mine and all(not e.get("weight") for e in mine), mine
    assert not any(e["kind"] in ("Started", "StepAdvanced", "ShadowStarted") for e in mine)

    # The final table: per version the outcome, the deciding check, the client answers, the report.
    table = out[out.index("What happened"):]
    assert re.search(r"^\s*v1\s.*served first", table, re.M)
    assert re.search(r"\spromoted\s+every check passed\s.*\s\d+\s", _row(table, "2"))
    assert re.search(r"\srolled back in shadow\s+shadow agreement\s+shadow failed: agreement: 0\.\d+ .*\s0\s",
                     _row(table, "3"))
    assert re.search(r"\srolled back in shadow\s+shadow agreement\s+shadow failed: agreement: .*\s0\s",
                     _row(table, "4"))
    assert re.search(r"\sstopped by the gate\s+performanceGate (minThroughputRatio|maxP99Ms)\s.*\s0\s",
                     _row(table, "5"))
    for version, s in v.items():  # the report's artifact URI (its tag), else the version's MLflow UI page
        assert s["where"] == (s["report"] or f"{doc['tracking']}/#/models/demo-mlp/versions/{version}")
        if s["report"]:
            assert "modelops-rollout/local.demo-mlp/" in s["report"] and s["report"].endswith("report.json")
        else:
            assert s["where"] in table
    m = re.search(r"client: (\d+) requests through the router, 0 lost; answered per version: v1 (\d+), v2 (\d+), "
                  r"v3 0, v4 0, v5 0; 0 failed \(v3's 500s reached 0 clients\)", out)
    assert m and int(m.group(1)) > 100 and doc["client"]["failed"] == 0
    assert "production -> v2" in out and "champion -> v5" in out
    assert re.search(r"done in \d+s \(wall time\)", out)
    assert "SOMETHING WENT WRONG" not in out
    # What it leaves behind: the status document of the deployment, as the operator writes it.
    status = json.loads((work / "local" / "status.json").read_text())
    assert status["stable"]["version"] == "2"
    assert status["canary"]["rolledBack"]["version"] == "5"
    assert status["canary"]["rolledBack"]["reason"] == "PerformanceGateFailed"
    assert not (work / "local" / "supervisor.json").exists()  # everything stopped


@pytest.mark.share("rest")  # balances the two shares of scripts/test.sh (~2 min)
def test_text_demo_promotes_a_text_classifier_by_canary(tmp_path):
    """`modelops demo --text`: a Hugging Face classifier (MLflow transformers flavor) converted
    with its tokenizer, served text in, and its next version promoted step by step."""
    work = tmp_path / "demo-text"
    r = subprocess.run([sys.executable, "-m", "modelops.cli", "demo", "--text", "--work-dir", str(work),
                        "--interval", "2s"], capture_output=True, text=True, timeout=600)
    out = r.stdout
    assert r.returncode == 0, out[-6000:] + r.stderr[-3000:]
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in out
    assert "Started: canary v2 started at 20% against stable v1" in out
    assert "StepAdvanced: canary v2 at 100% (step 3/3)" in out
    assert "Promoted: v2 passed every step: promoted" in out
    assert len(re.findall(r"analysis of v2 at \d+%: Passed", out)) == 3
    m = re.search(r"client: (\d+) texts through the router, (\d+) not answered 200", out)
    assert m and int(m.group(1)) > 0 and m.group(2) == "0", out[-3000:]
    assert re.search(r"^v2 .*promoted +3 passed", out, re.M)
