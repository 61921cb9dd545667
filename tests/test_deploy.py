"""deploy/ is checked structurally (no Docker here): YAML parses, every environment variable is a
setting, images agree between compose and k8s, container commands are real ``zoserve`` commands."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.queue import QUEUES
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SETTING_ENV = {f"ZOSERVE_{name.upper()}" for name in Settings.model_fields} | {"REDIS_URL"}
OTHER_ENV = {"OMP_NUM_THREADS", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "PYTHONUNBUFFERED",
             "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def k8s_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def pods() -> dict[str, dict[str, Any]]:
    """Deployment/StatefulSet name -> pod spec."""
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in k8s_docs()
            if d["kind"] in ("Deployment", "StatefulSet")}


def containers() -> dict[str, dict[str, Any]]:
    return {name: spec["containers"][0] for name, spec in pods().items()}


def dockerfile(name: str) -> str:
    return (DEPLOY / name).read_text()


def dockerfile_cmd(name: str) -> list[str]:
    line = [ln for ln in dockerfile(name).splitlines() if ln.startswith("CMD ")][-1]
    return json.loads(line[4:])


def env_names() -> dict[str, set[str]]:
    """Every environment variable named anywhere in deploy/, by where it was found."""
    out: dict[str, set[str]] = {}
    for name, svc in compose()["services"].items():
        env = svc.get("environment") or {}
        out[f"compose:{name}"] = set(env if isinstance(env, dict) else (e.split("=", 1)[0] for e in env))
    for d in k8s_docs():
        where = f"k8s:{d['kind']}/{d.get('metadata', {}).get('name')}"
        if d["kind"] == "ConfigMap":
            out[where] = set(d["data"])
        elif d["kind"] == "Secret":
            out[where] = set(d.get("stringData") or {}) | set(d.get("data") or {})
    for name, c in containers().items():
        out[f"k8s:container/{name}"] = {e["name"] for e in c.get("env", [])}
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        text = dockerfile(name).replace("\\\n", " ")
        out[name] = {m for line in text.splitlines() if line.startswith("ENV ")
                     for m in re.findall(r"([A-Z][A-Z0-9_]*)=", line)}
    text = "\n".join(p.read_text() for p in DEPLOY.rglob("*") if p.is_file())
    out["any ZOSERVE_ name in deploy/"] = set(re.findall(r"\bZOSERVE_[A-Z0-9_]+", text))
    return out


def test_yaml_parses_and_k8s_objects_are_well_formed() -> None:
    assert {"redis", "api", "worker-cpu", "worker-gpu", "flower"} <= set(compose()["services"])
    docs = k8s_docs()
    assert len(docs) >= 10
    for d in docs:
        assert {"apiVersion", "kind"} <= set(d), d
        assert d["kind"] == "Kustomization" or d["metadata"]["name"]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs if "metadata" in d}
    assert {("Deployment", "zoserve-api"), ("Service", "zoserve-api"), ("Deployment", "zoserve-worker-cpu"),
            ("Deployment", "zoserve-worker-gpu"), ("StatefulSet", "redis"), ("ConfigMap", "zoserve-config"),
            ("Secret", "zoserve-secrets")} <= kinds


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def test_every_env_var_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = {where: sorted(names - SETTING_ENV - OTHER_ENV) for where, names in env_names().items()}
    assert not {k: v for k, v in bad.items() if v}, "unknown env vars (typo, or add the setting)"
    config = next(d for d in k8s_docs() if d["kind"] == "ConfigMap")["data"]
    secret = next(d for d in k8s_docs() if d["kind"] == "Secret")["stringData"]
    for key, value in {**config, **secret}.items():  # the values parse as the settings they set
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.log_json and s.redis_url == secret["REDIS_URL"] and s.api_keys and s.segment_seconds == 2.0


def test_images_agree_between_compose_and_k8s() -> None:
    services = compose()["services"]
    assert services["api"]["image"] == f"zoserve-api:{VERSION}"
    assert services["worker-cpu"]["image"] == services["worker-gpu"]["image"] == f"zoserve-worker:{VERSION}"
    built = {s["image"]: s["build"]["dockerfile"] for s in services.values() if "build" in s}
    assert built == {f"zoserve-api:{VERSION}": "deploy/Dockerfile.api", f"zoserve-worker:{VERSION}": "deploy/Dockerfile.worker"}
    for dockerfile_path in built.values():
        assert (ROOT / dockerfile_path).exists()
    images = {name: c["image"] for name, c in containers().items()}
    assert images["zoserve-api"] == services["api"]["image"]
    assert images["zoserve-worker-cpu"] == images["zoserve-worker-gpu"] == services["worker-cpu"]["image"]
    for name, img in images.items():
        assert img.startswith(("zoserve-", "redis:")), (name, img)
    assert images["redis"].split(":")[0] == services["redis"]["image"].split(":")[0]


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    """Parse ``argv`` with the real ``zoserve`` CLI; returns (command, parsed args) without running it."""
    import zoserve.cli as cli

    seen: list[tuple[str, Any]] = []
    def recorder(name: str) -> Any:
        def record(args: Any) -> int:
            seen.append((name, args))
            return 0
        return record

    for name in ("cmd_api", "cmd_worker", "cmd_up", "cmd_submit", "cmd_watch"):
        monkeypatch.setattr(cli, name, recorder(name))
    assert argv[0] == "zoserve", argv
    assert cli.main(argv[1:]) == 0  # argparse exits (SystemExit 2) on an unknown command or option
    return seen[0]


def all_commands() -> dict[str, list[str]]:
    out = {f"compose:{n}": s["command"] for n, s in compose()["services"].items()
           if n in ("api", "worker-cpu", "worker-gpu")}
    out.update({f"k8s:{n}": c["command"] for n, c in containers().items() if n.startswith("zoserve-")})
    out.update({n: dockerfile_cmd(n) for n in ("Dockerfile.api", "Dockerfile.worker")})
    return out


def test_container_commands_are_real_cli_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    for where, argv in all_commands().items():
        cmd, args = run_cli(argv, monkeypatch)
        if "api" in where:
            assert cmd == "cmd_api" and args.host == "0.0.0.0" and args.port == 8000, where
        else:
            assert cmd == "cmd_worker" and args.pool == "solo", where
            expect = "gpu" if "gpu" in where or where == "Dockerfile.worker" else "cpu"
            assert args.queues == expect and set(args.queues.split(",")) <= set(QUEUES), where


def test_gpu_workers_get_a_gpu_and_the_gpu_queue() -> None:
    gpu = compose()["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    c = containers()["zoserve-worker-gpu"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert "nvidia.com/gpu" not in str(containers()["zoserve-worker-cpu"]["resources"])
    assert "pytorch/pytorch" in dockerfile("Dockerfile.worker") and "cuda" in dockerfile("Dockerfile.worker")


def test_api_image_is_slim_and_worker_image_has_torch() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [d for d in extras["server"] if d.startswith("torch")]
    assert any(d.startswith("prometheus-client") for d in extras["server"])
    api = "\n".join(ln for ln in dockerfile("Dockerfile.api").splitlines() if not ln.startswith("#"))
    assert "[server]" in api and "[worker]" not in api
    assert "torch" not in api.replace("assert 'torch' not in sys.modules", "")  # the build checks that itself
    assert '".[worker]"' in dockerfile("Dockerfile.worker")


def test_probes_and_metrics_point_at_real_routes() -> None:
    from service.app import create_app

    paths = set(create_app(Settings(redis_url="redis://unused")).openapi()["paths"])
    api_pod = pods()["zoserve-api"]
    c = api_pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz", "/metrics"} <= paths
    deployment = next(d for d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "zoserve-api")
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


def test_config_is_wired_and_workers_may_finish_a_segment_on_sigterm() -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs() if "metadata" in d}
    config = next(d for d in k8s_docs() if d["kind"] == "ConfigMap")["data"]
    segment = float(config["ZOSERVE_SEGMENT_SECONDS"])
    for name, spec in pods().items():
        if not name.startswith("zoserve-"):
            continue
        refs = spec["containers"][0]["envFrom"]
        assert ("ConfigMap", refs[0]["configMapRef"]["name"]) in names and ("Secret", refs[1]["secretRef"]["name"]) in names
        if "worker" in name:
            assert spec["terminationGracePeriodSeconds"] >= 10 * segment
    for name in ("worker-cpu", "worker-gpu"):
        grace = compose()["services"][name]["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) >= 10 * segment


def test_redis_is_durable() -> None:
    for args in (compose()["services"]["redis"]["command"], containers()["redis"]["args"]):
        joined = " ".join(args)
        assert "--appendonly yes" in joined and "noeviction" in joined
    assert "redis-data:/data" in compose()["services"]["redis"]["volumes"]
    sts = next(d for d in k8s_docs() if d["kind"] == "StatefulSet")
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_readme_explains_production() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Run in production"):]
    for needle in ("deploy/docker-compose.yml", "deploy/k8s", "--profile gpu", "nvidia.com/gpu", "appendonly",
                   "BGSAVE", "/metrics", "ZOSERVE_LOG_JSON", "SIGTERM"):
        assert needle in section, needle
