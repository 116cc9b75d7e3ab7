"""The README's main command: `modelops demo` shows a canary promoted and a bad version rolled back.

It runs as a user runs it (its own MLflow server, its own models, `modelops local up` in a child
process), with a shorter interval than its default to keep the suite quick; its output is checked
for both endings, the deciding check, the client's zero lost requests and the wall time, and the
MLflow it leaves behind is read back.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys


def test_demo_shows_a_promotion_and_a_rollback(tmp_path):
    work = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "modelops.cli", "demo", "--work-dir", str(work), "--interval", "2s"],
                       capture_output=True, text=True, timeout=600)
    out = r.stdout
    assert r.returncode == 0, out[-6000:] + r.stderr[-3000:]
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in out
    # The promotion, step by step, then the rollback with the deciding check.
    assert re.search(r"Started: canary v2 started at 20% against stable v1", out)
    assert "StepAdvanced: canary v2 at 50% (step 2/3)" in out
    assert "StepAdvanced: canary v2 at 100% (step 3/3)" in out
    assert "Promoted: v2 passed every step: promoted" in out
    assert len(re.findall(r"analysis of v2 at \d+%: Passed", out)) == 3
    assert "Started: canary v3 started at 20% against stable v2" in out
    assert re.search(r"RolledBack: analysis failed 2/2: successRate: 0\.\d+ < min 0\.99 "
                     r"\[deciding check: successRate\]", out)
    # The final table, the client's count, where to look in MLflow, the wall time.
    table = out[out.index("What happened"):]
    assert re.search(r"^v1 .*served first .*replaced by v2", table, re.M)
    assert re.search(r"^v2 .*promoted +3 passed +- +promoted ", table, re.M)
    assert re.search(r"^v3 .*rolled back +2 failed +successRate: 0\.\d+ < min 0\.99 +rolled back ", table, re.M)
    # v4 (input renamed): refused before any traffic, every difference named.
    assert "Started: canary v4" not in out
    assert "RolledBack: InterfaceChanged: input 'input' renamed or removed; new input 'features' " \
           "[deciding check: interface]" in out
    assert re.search(r"^v4 .*refused +- +InterfaceChanged: input 'input' renamed or removed; new input 'features' "
                     r"+rolled back ", table, re.M)
    m = re.search(r"client: (\d+) requests through the router, 0 lost; (\d+) answered 500 by v3 itself.*"
                  r", 0 failed after the rollback; 0 reached v4", out)
    assert m and int(m.group(1)) > 100 and int(m.group(2)) > 0
    assert "production -> v2" in out and "champion -> v4" in out
    assert re.search(r"done in \d+s \(wall time\)", out)
    assert "SOMETHING WENT WRONG" not in out
    # What it leaves behind: the status document of the deployment, as the operator writes it.
    status = json.loads((work / "local" / "status.json").read_text())
    assert status["stable"]["version"] == "2"
    assert status["canary"]["rolledBack"]["version"] == "4"
    assert status["canary"]["rolledBack"]["reason"] == "InterfaceChanged"
    assert status["canary"]["rolledBack"]["check"] == "interface"
    assert not (work / "local" / "supervisor.json").exists()  # everything stopped


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
