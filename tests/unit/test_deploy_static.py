"""The deployment files agree with the code: real CLI parser, real routes, ports, metrics.

No Docker engine and no cluster: every check reads the files in deploy/ (and docs/deploy.md)
and holds them against the objects the servers are built from — ``cache_edge.cli.main``'s parser
and its config loading, the aiohttp apps' routers, the Prometheus registries.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

import cache_edge.node.app
import origin.core.app
from cache_edge.cli import main as cli
from cache_edge.node.metrics import NodeMetrics
from cache_edge.server.config import NodeConfig, OriginConfig, Settings, parse_settings
from origin.core.metrics import OriginMetrics
from origin.core.pool import PoolStats

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DASHBOARD = DEPLOY / "grafana" / "cache-edge.json"
DOCS = (ROOT / "docs" / "deploy.md", DEPLOY / "local" / "README.md")

IMAGE = "cache-edge"  # the image name the k8s manifests use (kustomize `images` rewrites it)
RENDER = "cache-edge-render-config"
REDIS_ARGS = ["--maxmemory", "256mb", "--maxmemory-policy", "volatile-lru"]
REDIS_ARGS += ["--save", "", "--appendonly", "no"]
REGIONS = {"eu-west", "us-east"}
SOME_SECRET = "a-test-node-secret-0123456789"


# ------------------------------------------------------------------------------ helpers


def load_yaml(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
    return docs


def render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_config", DEPLOY / "render_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(src: Path, dest: Path, env: dict[str, str]) -> None:
    """Run the render step exactly as the image runs it (same script, same arguments)."""
    status = render_module().main([str(src), str(dest)], env)
    assert status == 0, f"render-config failed for {src}"


@dataclass
class Launch:
    command: str  # "node" or "origin"
    settings: Settings


def launch(argv: list[str], config: Path, monkeypatch: pytest.MonkeyPatch) -> Launch:
    """``cache-edge ARGV`` through the real CLI, stopped just before the server would start."""
    seen: list[Launch] = []
    monkeypatch.setattr(cache_edge.node.app, "run_node", lambda s: seen.append(Launch("node", s)))
    monkeypatch.setattr(origin.core.app, "run_origin", lambda s: seen.append(Launch("origin", s)))
    monkeypatch.setenv("CACHE_EDGE_CONFIG", str(config))
    try:
        cli.build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse reports, then exits
        pytest.fail(f"`cache-edge {shlex.join(argv)}` is rejected by the CLI parser ({exc})")
    assert cli.main(argv) == 0
    assert len(seen) == 1, f"`cache-edge {shlex.join(argv)}` starts no server"
    return seen[0]


def get_routes(app: web.Application) -> set[str]:
    return {r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource}


def app_for(run: Launch) -> web.Application:
    if run.command == "node":
        return cache_edge.node.app.create_node_app(run.settings)
    return origin.core.app.create_origin_app(run.settings)


def listen_port(run: Launch) -> int:
    listen = run.settings.node.listen if run.command == "node" else run.settings.origin.listen
    assert listen.host in ("0.0.0.0", "::"), f"{run.command} listens on {listen}: unreachable"
    return listen.port


def valid_settings() -> Settings:
    return parse_settings(
        {
            "node_secret": SOME_SECRET,
            "tenants": [{"id": "t", "database_url": "postgresql://u@db:5432/d"}],
        }
    )


def exposition_names(registry: CollectorRegistry) -> set[str]:
    """Sample names as /metrics shows them (counters get _total, histograms _bucket...)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def metric_names() -> set[str]:
    origin_metrics = OriginMetrics(
        lambda: [PoolStats(tenant="t", size=2, idle=1, in_use=1, waiting=0, max_size=10)]
    )
    return exposition_names(NodeMetrics("r").registry) | exposition_names(origin_metrics.registry)


def http_target(text: str) -> tuple[int, str]:
    """The port and path of the one local URL a healthcheck command fetches."""
    found = re.findall(r"http://127\.0\.0\.1:(\d+|%s)(/[A-Za-z0-9_/]+)", text)
    assert len(found) == 1, f"expected one http://127.0.0.1:PORT/PATH in {text!r}"
    port, path = found[0]
    return (int(port) if port.isdigit() else -1), path


def python_code(argv: list[str]) -> str:
    """The ``-c`` program of a ``python -c ...`` command, checked to compile."""
    assert argv[0] == "python" and argv[1] == "-c", argv
    compile(argv[2], "<healthcheck>", "exec")
    return argv[2]


# ------------------------------------------------------------------------ YAML + TOML


def all_yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_every_yaml_file_parses() -> None:
    files = all_yaml_files()
    assert COMPOSE in files and K8S / "kustomization.yaml" in files
    for path in files:
        load_yaml(path)


@pytest.mark.parametrize("path", [DEPLOY / "config" / "cache-edge.toml", K8S / "cache-edge.toml"])
def test_shared_config_holds_no_secret_and_renders_valid(path: Path, tmp_path: Path) -> None:
    doc = tomllib.loads(path.read_text())
    assert "node_secret" not in doc, "node_secret must come from a secret, not the shared file"
    for tenant in doc["tenants"]:
        assert urlsplit(tenant["database_url"]).password is None, "password in database_url"
    out = tmp_path / "cache-edge.toml"
    render(path, out, {"CACHE_EDGE_NODE_SECRET": SOME_SECRET})
    settings = parse_settings(tomllib.loads(out.read_text()))
    assert settings.node_secret == SOME_SECRET
    assert settings.origin.listen.port == OriginConfig().listen.port
    assert settings.node.listen.port == NodeConfig().listen.port
    assert settings.tenants


def test_render_config_refuses_what_would_misconfigure(tmp_path: Path) -> None:
    mod = render_module()
    shared = tmp_path / "shared.toml"
    shared.write_text((DEPLOY / "config" / "cache-edge.toml").read_text())
    out = tmp_path / "out.toml"
    assert mod.main([str(shared), str(out)], {}) == 2  # no secret at all
    assert mod.main([str(shared), str(out)], {"CACHE_EDGE_NODE_SECRET": "short"}) == 2
    assert not out.exists()
    tricky = 'q"uo\\te\nd-secret-0123456789 é'
    secret_file = tmp_path / "secret"
    secret_file.write_text(tricky + "\n")
    assert mod.main([str(shared), str(out)], {"CACHE_EDGE_NODE_SECRET_FILE": str(secret_file)}) == 0
    assert tomllib.loads(out.read_text())["node_secret"] == tricky
    assert out.stat().st_mode & 0o777 == 0o600
    shared.write_text(out.read_text())  # a shared file that already carries a secret
    assert mod.main([str(shared), str(out)], {"CACHE_EDGE_NODE_SECRET": SOME_SECRET}) == 2


# -------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_image_shape() -> None:
    ins = dockerfile_instructions()
    args = dict(v.split("=", 1) for k, v in ins if k == "ARG" and "=" in v)
    froms = [
        v.replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", "?")) for k, v in ins if k == "FROM"
    ]
    assert len(froms) >= 2 and all(f.startswith("python:3.11-slim") for f in froms), froms
    assert any(" AS build" in f for f in froms[:-1]), "the wheel is built in its own stage"
    runs = " ".join(v for k, v in ins if k == "RUN")
    assert "pip wheel" in runs and '"cache-edge[server]"' in runs
    user = [v for k, v in ins if k == "USER"][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, "numeric non-root USER"
    assert json.loads([v for k, v in ins if k == "ENTRYPOINT"][-1]) == ["cache-edge"]
    exposed = {int(p) for k, v in ins if k == "EXPOSE" for p in v.split()}
    assert exposed == {OriginConfig().listen.port, NodeConfig().listen.port}


def test_dockerfile_healthcheck_hits_a_real_route() -> None:
    ins = dockerfile_instructions()
    checks = [v for k, v in ins if k == "HEALTHCHECK"]
    assert len(checks) == 1
    argv = json.loads(checks[0].split(" CMD ", 1)[1])
    code = python_code(argv)
    assert "urllib" in code and "curl" not in code
    _, path = http_target(code)
    # The default port is the node's; origins set CACHE_EDGE_HEALTH_PORT (checked below).
    assert f"'CACHE_EDGE_HEALTH_PORT', '{NodeConfig().listen.port}'" in code
    settings = valid_settings()
    assert path in get_routes(cache_edge.node.app.create_node_app(settings))
    assert path in get_routes(origin.core.app.create_origin_app(settings))


def test_docker_build_context_keeps_what_the_dockerfile_copies() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignore = [line for line in ignore if line and not line.startswith("#")]
    assert ignore[0] == "*", "the context is an allowlist"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in rest:
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for src in sources:
                assert src.rstrip("/") in allowed, f"COPY {src} is excluded by .dockerignore"
                assert (ROOT / src).exists(), f"COPY {src}: no such file"
    assert ".venv" not in allowed and ".dev" not in allowed


# ----------------------------------------------------------------------------- compose

_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with nothing set in the environment."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def compose() -> dict[str, Any]:
    doc = load_yaml(COMPOSE)
    assert len(doc) == 1
    return doc[0]


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {k: interpolate(str(v)) for k, v in env.items()}


def compose_mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read-only) for short-syntax volumes."""
    mounts = {}
    for spec in service.get("volumes", []):
        src, dst, *mode = spec.split(":")
        mounts[dst] = (src, mode == ["ro"])
    return mounts


@pytest.fixture
def compose_config(tmp_path: Path) -> Path:
    """Run the `config` service's render step as compose would, on this machine's paths."""
    svc = compose()["services"]["config"]
    assert svc["entrypoint"] == [RENDER]
    src, dest = svc["command"]
    mounts = compose_mounts(svc)
    host_src, ro = mounts[src]
    assert ro, "the shared config is mounted read-only"
    assert (COMPOSE.parent / host_src).resolve() == DEPLOY / "config" / "cache-edge.toml"
    assert mounts[str(Path(dest).parent)] == ("runtime-config", False)
    out = tmp_path / "cache-edge.toml"
    render(COMPOSE.parent / host_src, out, compose_env(svc))
    return out


def test_compose_topology() -> None:
    services = compose()["services"]
    assert {"postgres", "origin", "config"} <= set(services)
    nodes = {n: s for n, s in services.items() if s.get("command", [None])[0] == "node"}
    assert {s["command"][s["command"].index("--region") + 1] for s in nodes.values()} == REGIONS
    for name, svc in nodes.items():
        assert svc["deploy"]["replicas"] == 2, name
    redis = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("redis:")}
    assert len(redis) == len(REGIONS)
    for name, svc in redis.items():
        assert svc["command"] == ["redis-server", *REDIS_ARGS], name
        assert svc["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]


def check_one_shot(name: str, svc: dict[str, Any], compose_config: Path) -> None:
    """A one-shot cache-edge command (the auto-invalidation setup): it parses with the real
    CLI, names a tenant of the config that opted in, and gates the origin's start."""
    from cache_edge.cli.main import build_parser
    from cache_edge.server.config import load_settings

    args = build_parser().parse_args([*svc["command"], "--config", str(compose_config)])
    assert args.command == "origin" and args.action == "setup-auto-invalidation", name
    tenant = load_settings(str(compose_config)).tenant(args.tenant)
    assert tenant is not None and tenant.captured, f"{name}: tenant {args.tenant} not opted in"
    assert "PGPASSWORD" in compose_env(svc), f"{name}: the setup connects to PostgreSQL"
    origin = compose()["services"]["origin"]
    assert origin["depends_on"][name]["condition"] == "service_completed_successfully"
    postgres_args = compose()["services"]["postgres"]["command"]
    assert "wal_level=logical" in postgres_args


def test_compose_cache_edge_services_run_real_commands(
    compose_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = compose()
    services = doc["services"]
    image = services["origin"]["image"]
    runs: dict[str, Launch] = {}
    for name, svc in services.items():
        if svc.get("image") != image or "entrypoint" in svc:
            continue  # not a server (the config service is checked by the fixture)
        if svc.get("restart") == "no":
            check_one_shot(name, svc, compose_config)
            continue
        env = compose_env(svc)
        mounts = compose_mounts(svc)
        config_dir = str(Path(env["CACHE_EDGE_CONFIG"]).parent)
        assert mounts[config_dir] == ("runtime-config", True), f"{name}: rendered config, ro"
        assert svc["depends_on"]["config"]["condition"] == "service_completed_successfully"
        run = runs[name] = launch(svc["command"], compose_config, monkeypatch)
        port = listen_port(run)
        for spec in svc.get("ports", []):
            assert int(str(spec).rsplit(":", 1)[1].split("/")[0]) == port, f"{name}: {spec}"
        hc_port, hc_path = http_target(python_code(svc["healthcheck"]["test"][1:]))
        assert hc_port == port, f"{name}: healthcheck on {hc_port}, server on {port}"
        assert hc_path in get_routes(app_for(run)), f"{name}: no route {hc_path}"
        if run.command == "origin":
            assert env.get("CACHE_EDGE_HEALTH_PORT") == str(port)
            assert "PGPASSWORD" in env
        else:
            assert "PGPASSWORD" not in env, f"{name}: nodes never need the database password"
    assert {r.command for r in runs.values()} == {"node", "origin"}
    origin_port = listen_port(runs["origin"])
    for name, run in runs.items():
        if run.command != "node":
            continue
        node = run.settings.node
        redis_host = str(urlsplit(node.redis_url).hostname)
        assert redis_host in services, f"{name}: Redis {redis_host} is not a service"
        assert services[redis_host]["command"][1:] == REDIS_ARGS
        assert f"--region {node.region}" in shlex.join(services[name]["command"])
        assert redis_host.endswith(node.region), f"{name}: uses another region's Redis"
        origin_url = urlsplit(node.origin_url)
        assert (origin_url.hostname, origin_url.port) == ("origin", origin_port)
    regions = [r.settings.node.region for r in runs.values() if r.command == "node"]
    assert len(regions) == len(set(regions)) == len(REGIONS)


def test_compose_secrets_are_placeholders_from_the_environment() -> None:
    for name, svc in compose()["services"].items():
        for key, value in svc.get("environment", {}).items():
            if re.search(r"SECRET|PASSWORD", key):
                m = _INTERPOLATION.fullmatch(str(value))
                assert m, f"{name}.{key} must come from the environment: ${{VAR:-placeholder}}"
                assert "placeholder" in (m.group(2) or ""), f"{name}.{key}: obvious placeholder"
    example = (DEPLOY / ".env.example").read_text()
    for line in example.splitlines():
        if "=" in line and not line.startswith("#"):
            assert "placeholder" in line.split("=", 1)[1], line


# -------------------------------------------------------------------------- Kubernetes


def kustomization() -> dict[str, Any]:
    return load_yaml(K8S / "kustomization.yaml")[0]


def k8s_objects() -> list[dict[str, Any]]:
    objs = []
    for name in kustomization()["resources"]:
        objs += load_yaml(K8S / name)
    return objs


def generated_configmap() -> dict[str, Any]:
    (gen,) = kustomization()["configMapGenerator"]
    data = {Path(f).name: (K8S / f).read_text() for f in gen["files"]}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": gen["name"]},
        "data": data,
    }


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == kind}


def pod_spec(deploy: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deploy["spec"]["template"]["spec"]
    return spec


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def secret_value(name: str, key: str) -> str:
    secret = by_kind("Secret")[name]
    value: str = secret["stringData"][key]
    return value


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """A container's environment, secretKeyRefs resolved from the (placeholder) Secret."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret_value(ref["name"], ref["key"])
    return env


def test_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    gen = generated_configmap()
    assert gen["metadata"]["name"] == "cache-edge-config"


def test_k8s_objects_have_the_expected_kinds() -> None:
    kinds = [o["kind"] for o in k8s_objects()] + ["ConfigMap"]
    for kind in ("Namespace", "ConfigMap", "Secret", "Deployment", "Service"):
        assert kind in kinds, kind
    nodes = [d for d in by_kind("Deployment").values() if "node" in d["metadata"]["name"]]
    assert len(nodes) == len(REGIONS)
    assert len(by_kind("HorizontalPodAutoscaler")) == len(REGIONS)
    assert len(by_kind("PodDisruptionBudget")) >= len(REGIONS)
    for obj in k8s_objects():
        assert obj["apiVersion"], obj
        assert obj["metadata"]["name"], obj
        if obj["kind"] == "HorizontalPodAutoscaler":
            assert obj["apiVersion"] == "autoscaling/v2"
        if obj["kind"] == "PodDisruptionBudget":
            assert obj["apiVersion"] == "policy/v1"


def test_k8s_objects_match_the_kubernetes_schemas() -> None:
    version = kubernetes_validate.latest_version()
    for obj in [*k8s_objects(), generated_configmap()]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except Exception as exc:  # jsonschema's ValidationError, or an unknown kind/version
            reason = getattr(exc, "message", exc)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} does not validate: {reason}")


def check_pod(deploy: dict[str, Any]) -> None:
    name = deploy["metadata"]["name"]
    spec = pod_spec(deploy)
    assert selects(
        deploy["spec"]["selector"]["matchLabels"], deploy["spec"]["template"]["metadata"]["labels"]
    )
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc.get("runAsUser", 1) != 0, name
    assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False, f"{name}/{c['name']}"
        assert csc["capabilities"]["drop"] == ["ALL"], f"{name}/{c['name']}"
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]), f"{name}/{c['name']}: requests"
        assert "memory" in res["limits"], f"{name}/{c['name']}: memory limit"


def test_k8s_cache_edge_pods_run_real_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configmap = generated_configmap()
    services = by_kind("Service")
    deployments = by_kind("Deployment")
    runs: dict[str, Launch] = {}
    for name, deploy in deployments.items():
        check_pod(deploy)
        spec = pod_spec(deploy)
        (main,) = spec["containers"]
        if main["image"] != IMAGE:
            continue
        volumes = {v["name"]: v for v in spec["volumes"]}
        # The init container renders ConfigMap + Secret into the volume the server reads.
        (init,) = spec["initContainers"]
        assert init["image"] == IMAGE and init["command"] == [RENDER]
        src, dest = init["args"]
        init_mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
        shared = init_mounts[str(Path(src).parent)]
        assert shared["readOnly"] is True
        assert volumes[shared["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
        runtime = init_mounts[str(Path(dest).parent)]
        assert "emptyDir" in volumes[runtime["name"]]
        main_mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
        assert main_mounts[str(Path(dest).parent)] == {**runtime, "readOnly": True}
        env = env_of(main)
        assert env["CACHE_EDGE_CONFIG"] == dest, f"{name}: reads the rendered file"
        shared_file = tmp_path / f"{name}-shared.toml"
        shared_file.write_text(configmap["data"][Path(src).name])
        rendered = tmp_path / f"{name}.toml"
        render(shared_file, rendered, env_of(init))
        # The image's ENTRYPOINT is `cache-edge`; `args` is the rest of the command line.
        assert "command" not in main, f"{name}: keep the image's ENTRYPOINT"
        run = runs[name] = launch(main["args"], rendered, monkeypatch)
        port = listen_port(run)
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert list(ports.values()) == [port], f"{name}: containerPort != listen port {port}"
        routes = get_routes(app_for(run))
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = main[probe]["httpGet"]
            assert get["path"] == path and path in routes, f"{name}: {probe} {get['path']}"
            assert ports.get(get["port"], get["port"]) == port, f"{name}: {probe} port"
        assert main["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
        assert ("PGPASSWORD" in env) == (run.command == "origin"), f"{name}: PGPASSWORD"
        # A Service reaches this pod on the same port.
        svc = services[name]
        assert selects(svc["spec"]["selector"], deploy["spec"]["template"]["metadata"]["labels"])
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
        if run.command == "node":
            labels = deploy["spec"]["template"]["metadata"]["labels"]
            assert labels["cache-edge/region"] == run.settings.node.region
    assert {r.command for r in runs.values()} == {"node", "origin"}
    regions = {r.settings.node.region for r in runs.values() if r.command == "node"}
    assert regions == REGIONS
    for name, run in runs.items():
        if run.command != "node":
            continue
        node = run.settings.node
        origin_url = urlsplit(node.origin_url)
        origin_svc = services[str(origin_url.hostname)]
        assert origin_svc["spec"]["ports"][0]["port"] == origin_url.port
        assert listen_port(runs[origin_url.hostname or ""]) == origin_url.port
        redis_url = urlsplit(node.redis_url)
        redis_host = str(redis_url.hostname)
        assert redis_host.endswith(node.region), f"{name}: uses another region's Redis"
        assert services[redis_host]["spec"]["ports"][0]["port"] == (redis_url.port or 6379)
        (redis,) = pod_spec(deployments[redis_host])["containers"]
        assert redis["args"] == ["redis-server", *REDIS_ARGS]
        assert deployments[redis_host]["spec"]["strategy"]["type"] == "Recreate"


def test_k8s_node_autoscaling_and_disruption_budgets() -> None:
    deployments = by_kind("Deployment")
    hpas = by_kind("HorizontalPodAutoscaler")
    pdbs = by_kind("PodDisruptionBudget")
    nodes = {n: d for n, d in deployments.items() if pod_spec(d)["containers"][0]["name"] == "node"}
    assert len(nodes) == len(REGIONS)
    for name, deploy in nodes.items():
        (hpa,) = [h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == name]
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert hpa["spec"]["minReplicas"] >= 2
        assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
        assert "replicas" not in deploy["spec"], f"{name}: the HPA owns replicas"
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        covering = [
            p for p in pdbs.values() if selects(p["spec"]["selector"]["matchLabels"], labels)
        ]
        assert len(covering) == 1, f"{name}: one PodDisruptionBudget"
        budget = covering[0]["spec"]
        assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == 1
        strategy = deploy["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0, f"{name}: roll without losing capacity"


def test_k8s_secret_holds_only_placeholders() -> None:
    (secret,) = by_kind("Secret").values()
    assert "data" not in secret, "stringData only, readable placeholders"
    for key, value in secret["stringData"].items():
        assert "placeholder" in value.lower(), f"Secret key {key} must be an obvious placeholder"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_build_renders_the_same_objects() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted([o["kind"] for o in k8s_objects()] + ["ConfigMap"])
    assert all(
        d["metadata"].get("namespace") == "cache-edge" for d in rendered if d["kind"] != "Namespace"
    )
    (cm,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["name"].startswith("cache-edge-config-"), "hash suffix rolls pods"
    for deploy in (d for d in rendered if d["kind"] == "Deployment"):
        for volume in deploy["spec"]["template"]["spec"]["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] == cm["metadata"]["name"], "reference follows"


# ----------------------------------------------------------------------------- Grafana

_METRIC = re.compile(r"\bcache_edge_[a-z0-9_]+")


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    return exprs


def test_dashboard_uses_only_real_metric_names() -> None:
    known = metric_names()
    exprs = dashboard_exprs()
    assert exprs
    used = {m for e in exprs for m in _METRIC.findall(e)}
    assert used - known == set(), f"not exposed by any registry: {sorted(used - known)}"
    for expr in exprs:
        for name in _METRIC.findall(expr):
            if name.endswith(("_total", "_bucket")):
                assert re.search(rf"rate\(\s*{name}\b", expr), f"{name} outside rate(): {expr}"
        if "histogram_quantile" in expr:
            assert "_bucket" in expr and re.search(r"by \([^)]*\ble\b", expr), expr


def test_dashboard_covers_what_operators_watch() -> None:
    used = {m for e in dashboard_exprs() for m in _METRIC.findall(e)}
    wanted = {
        "cache_edge_node_requests_total",  # hit ratio by cache status, request rate
        "cache_edge_node_request_seconds_bucket",  # p50/p99
        "cache_edge_node_errors_total",
        "cache_edge_node_redis_errors_total",
        "cache_edge_node_coalesced",
        "cache_edge_origin_errors_total",
        "cache_edge_origin_query_duration_seconds_bucket",
        "cache_edge_origin_pool_in_use",
        "cache_edge_origin_pool_idle",
        "cache_edge_origin_pool_waiting",
        "cache_edge_origin_coalesced_total",
    }
    assert wanted <= used, f"missing panels for {sorted(wanted - used)}"
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all("gridPos" in p for p in dash["panels"])


# -------------------------------------------------------------------------------- docs


def test_docs_name_real_metrics_and_commands() -> None:
    known = metric_names()
    parser = cli.build_parser()
    for doc in DOCS:
        text = doc.read_text()
        unknown = set(_METRIC.findall(text)) - known
        assert not unknown, f"{doc.name} names metrics that do not exist: {sorted(unknown)}"
        commands = re.findall(r"`(cache-edge [^`]+)`", text)
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S):
            commands += re.findall(r"^\s*(?:\.venv/bin/)?(cache-edge [^\n#]+)", block, re.M)
        assert commands, doc
        for command in commands:
            argv = shlex.split(command)[1:]
            try:
                parser.parse_args(argv)
            except SystemExit as exc:
                pytest.fail(f"{doc.name}: `{command}` is rejected by the CLI ({exc})")
