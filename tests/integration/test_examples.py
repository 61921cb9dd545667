"""The examples run against the real stack and do what they say."""

from __future__ import annotations

from examples import image_preference, rl_ranked_episodes
from tests.conftest import API_KEY


def test_rl_by_ranked_episodes_improves_the_policy(api_url: str) -> None:
    out = rl_ranked_episodes.main(api_url, queries=120, api_key=API_KEY, verbose=False)
    assert out["after"] > out["before"] + 50, out


def test_image_preference_gets_warmer(api_url: str) -> None:
    out = image_preference.main(api_url, rounds=30, api_key=API_KEY, verbose=False)
    assert out["after"] > out["before"], out
