"""The conformance story (tests/rollout_conformance.py) through the one driver on the fake
platform and on local mode's `LocalPlatform` (a real router process): the same transcript."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout_conformance import FakeAdapter, LocalAdapter, check_story, run_story  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def reference():
    t = run_story(FakeAdapter)
    check_story(t)
    return t


def test_the_story_on_the_fake_platform(reference):
    assert reference.passes > 20  # the story took passes (steps are analysed, not skipped)


def test_local_platform_gives_the_same_story(reference, tmp_path):
    t = run_story(lambda world: LocalAdapter(world, tmp_path))
    check_story(t)
    assert t.states == reference.states
    assert t.notifications == reference.notifications
    assert t.history == reference.history and t.aliases == reference.aliases


def test_a_version_serving_before_the_canary_strategy_is_adopted_as_stable():
    from modelops.rollout.driver import adopt
    from modelops.rollout.state import Phase, RolloutState

    adopted = adopt(RolloutState(), "3")
    assert adopted.phase == Phase.STABLE and adopted.stable_version == "3"
    kept = RolloutState(phase=Phase.STABLE, stable_version="2")
    assert adopt(kept, "3") is kept and adopt(RolloutState(), None) == RolloutState()
