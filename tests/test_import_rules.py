"""Dependencies run one way: zoserve (SDK) → service → workers. Checked in fresh interpreters."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> None:
    env_path = f"{ROOT}:{ROOT / 'client'}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": env_path})
    assert out.returncode == 0, out.stderr


def test_api_never_imports_torch_or_workers() -> None:
    _run("import sys, service.app; service.app.create_app(); "
         "bad = [m for m in sys.modules if m == 'torch' or m.startswith('workers')]; assert not bad, bad")


def test_sdk_needs_only_httpx_and_pydantic() -> None:
    _run("import sys\nclass Block:\n  def find_spec(self, name, *a):\n"
         "    if name.split('.')[0] in {'fastapi','redis','celery','torch','service','workers','starlette'}: raise ImportError(name)\n"
         "sys.meta_path.insert(0, Block())\nimport zoserve; zoserve.Client('http://127.0.0.1:9')")


def test_algorithms_are_pure() -> None:
    _run("import sys\nclass Block:\n  def find_spec(self, name, *a):\n"
         "    if name.split('.')[0] in {'celery','redis','httpx','pydantic','fastapi','service'}: raise ImportError(name)\n"
         "sys.meta_path.insert(0, Block())\nimport workers.algorithms.registry, workers.algorithms.zo")
