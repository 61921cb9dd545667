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


def test_federated_f1_improves_shared_model(api_url: str) -> None:
    from examples import federated_f1

    out = federated_f1.main(api_url, method="fedzo", rounds=4, api_key=API_KEY, verbose=False)
    assert out["after"] > max(out["before"], 0.85), out
