"""Errors survive a process boundary (the converter Job's last line) by their reason."""

import subprocess
import sys

from modelops import errors


def test_from_reason_rebuilds_the_class_and_its_retry_policy():
    e = errors.from_reason("ParityFailed", "diverges")
    assert type(e) is errors.ParityFailed and str(e) == "diverges" and not e.retryable
    assert errors.from_reason("RegistryUnavailable", "down").retryable
    assert type(errors.from_reason("AliasNotFound", "x")) is errors.AliasNotFound
    assert type(errors.from_reason("InvalidSpec", "bad")) is errors.InvalidSpec


def test_unknown_reason_is_a_conversion_failure():
    e = errors.from_reason("SomethingNew", "boom")
    assert type(e) is errors.ConversionError and str(e) == "boom"


def test_cli_failure_line_round_trips(tmp_path):
    """What `modelops convert` prints on failure is what the operator parses."""
    from modelops_operator.conversion import CLI_ERROR

    r = subprocess.run([sys.executable, "-m", "modelops.cli", "convert", "not-a-uri",
                        "--tracking-uri", "http://127.0.0.1:9", "--output", str(tmp_path)],
                       capture_output=True, text=True)
    m = CLI_ERROR.search(r.stderr)
    assert r.returncode == 2 and m is not None
    assert type(errors.from_reason(m["reason"], m["message"])) is errors.InvalidModelURI
