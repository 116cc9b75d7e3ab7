"""`modelops local up`'s progress output: a rich live table on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import re

from modelops.local.display import Display, Row

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_on_a_terminal_the_table_is_live_and_events_print_above_it():
    out = io.StringIO()
    d = Display(out, live=True, t0=0)
    d.event("router: http://127.0.0.1:8080")
    d.table([Row("1", "stable", 90, rps=12.5, p99_ms=3.2), Row("2", "canary", 10, "1/3", rps=1.5)],
            "canary v2 at 10%")
    d.event("v2: step 2/3")
    d.table([Row("1", "stable", 50), Row("2", "canary", 50, "2/3")], "canary v2 at 50%")
    d.close()
    raw = out.getvalue()
    assert "\x1b[" in raw  # redrawn in place (cursor movement), not appended
    text = ANSI.sub("", raw)
    assert text.count("router: http://127.0.0.1:8080") == 1 and text.count("v2: step 2/3") == 1
    assert text.index("v2: step 2/3") < text.rindex("canary v2 at 50%")
    last = text[text.rindex("canary v2 at 50%"):]
    assert re.search(r"v1\s+stable\s+50%", last) and re.search(r"v2\s+canary\s+50%\s+2/3", last)
    assert "12.5" not in last  # the old rows are gone from the last table


def test_elsewhere_one_line_per_change_without_escape_codes():
    out = io.StringIO()
    d = Display(out, live=False, every=3600, t0=0)
    d.table([Row("1", "stable", 100, rps=10, p99_ms=2.0)], "v1")
    d.table([Row("1", "stable", 100, rps=11, p99_ms=2.0)], "v1")  # same split, within `every`: not repeated
    d.event("v2 converted")
    d.table([Row("1", "stable", 90), Row("2", "canary", 10, "1/3")], "canary v2")
    d.close()
    text = out.getvalue()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 3 and "v1 stable 100% 10 req/s p99 2.0 ms" in lines[0]
    assert "v2 converted" in lines[1] and "v2 canary 10% step 1/3" in lines[2]
