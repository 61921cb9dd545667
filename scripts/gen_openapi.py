"""Regenerate openapi.yaml from the app: `python scripts/gen_openapi.py` (make openapi)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def render() -> str:
    sys.path[:0] = [str(ROOT), str(ROOT / "client")]
    from service.app import create_app
    from service.settings import Settings

    spec = create_app(Settings(redis_url="redis://unused")).openapi()
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=120)


if __name__ == "__main__":
    (ROOT / "openapi.yaml").write_text(render())
    print("wrote openapi.yaml")
