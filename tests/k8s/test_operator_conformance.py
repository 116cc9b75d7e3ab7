"""The conformance story (tests/rollout_conformance.py) on the operator's `KServePlatform` and
status store against the API-server emulator: the same transcript as the fake platform's."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

from rollout_conformance import FakeAdapter, KServeAdapter, check_story, run_story  # noqa: E402

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(240)]


async def test_kserve_platform_on_the_emulator_gives_the_same_story(apiserver):
    from modelops_operator.kube import Kube, load_configuration

    reference = run_story(FakeAdapter)
    kube = Kube(load_configuration(str(apiserver.url).rstrip("/")))
    t = await asyncio.to_thread(run_story, lambda world: KServeAdapter(world, kube, "default"))
    check_story(t)
    assert t.states == reference.states
    assert t.notifications == reference.notifications
    assert t.history == reference.history and t.aliases == reference.aliases
