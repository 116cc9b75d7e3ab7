"""The serve command's device default follows MODELOPS_DEVICE (set by the operator on GPU models)."""

from modelops.cli import build_parser


def test_device_defaults_to_auto(monkeypatch):
    monkeypatch.delenv("MODELOPS_DEVICE", raising=False)
    assert build_parser().parse_args(["serve", "d", "--name", "m"]).device == "auto"


def test_device_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MODELOPS_DEVICE", "cuda")
    assert build_parser().parse_args(["serve", "d", "--name", "m"]).device == "cuda"


def test_explicit_device_flag_wins(monkeypatch):
    monkeypatch.setenv("MODELOPS_DEVICE", "cuda")
    assert build_parser().parse_args(["serve", "d", "--name", "m", "--device", "cpu"]).device == "cpu"


def test_convert_fuses_transformers_unless_told_not_to():
    base = ["convert", "models:/m/1", "--output", "out"]
    assert build_parser().parse_args(base).fusion is True
    assert build_parser().parse_args(base + ["--no-fusion"]).fusion is False
