"""openapi.yaml is generated from the app; this fails when it drifts (run `make openapi`)."""

from pathlib import Path

from scripts.gen_openapi import render


def test_openapi_yaml_is_current() -> None:
    committed = (Path(__file__).resolve().parents[1] / "openapi.yaml").read_text()
    assert committed == render(), "openapi.yaml is stale: run `make openapi`"
