"""The deploy files: compose files as compose itself renders them, k8s manifests against the Kubernetes schemas.

Fast (no daemon: ``docker compose config`` only parses). Running the stack for real is
tests/test_deploy_stack.py (``make test-deploy``).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.deploy import (
    ROOT,
    command_of,
    compose_config,
    dockerfile_user,
    env_of,
    k8s_documents,
    option,
    published,
    readme_variables,
)

APP = ("worker", "web", "ingest")
NODES = ("redis-1", "redis-2", "redis-3")
# Read by the cluster support that lands with issue 12's Deliver 1 (not in README's table yet).
PENDING_VARIABLES = {"BINORMAL_REDIS_CLUSTER"}
K8S_VERSIONS = ("1.29.0", "1.33.0")


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    return compose_config("single")


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return compose_config("cluster")


def _kubernetes_validate() -> Any:
    return pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]' brings kubernetes-validate")


def _assert_redis_private(compose: dict[str, Any], name: str) -> None:
    svc = compose["services"][name]
    assert not svc.get("ports"), f"{name} must not be published to the host"
    networks = list(svc["networks"])
    assert networks == ["backend"], f"{name} is on {networks}"
    assert compose["networks"]["backend"].get("internal") is True
    health = svc["healthcheck"]["test"]
    assert "redis-cli ping" in " ".join(health), health
    cmd = command_of(svc)
    assert option(cmd, "--appendonly") == "yes", cmd
    assert option(cmd, "--appendfsync") in ("everysec", "always"), cmd
    assert option(cmd, "--maxmemory-policy") == "noeviction", cmd


def _assert_app_hardened(compose: dict[str, Any]) -> None:
    images = {compose["services"][s]["image"] for s in APP}
    assert len(images) == 1, f"one image for every app service, got {images}"
    for name in APP:
        svc = compose["services"][name]
        assert svc["user"].split(":")[0] not in ("0", "root"), name
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile", name
    assert compose["services"]["worker"]["deploy"]["replicas"] >= 2
    for name in ("web", "ingest"):
        env = env_of(compose["services"][name])
        assert env["HOST"] == "0.0.0.0"
        # What a real deployment does: tokens, never BINORMAL_ALLOW_ANONYMOUS.
        assert env["BINORMAL_TOKENS_FILE"].startswith("/run/secrets/"), env
        assert "BINORMAL_ALLOW_ANONYMOUS" not in env
        assert compose["services"][name]["secrets"], name
        for host_ip, _, _ in published(compose["services"][name]):
            assert host_ip == "127.0.0.1", f"{name} is published on {host_ip!r} by default"


def _assert_variables_exist(compose: dict[str, Any]) -> None:
    known = readme_variables() | PENDING_VARIABLES
    for name in APP:
        unknown = set(env_of(compose["services"][name])) - known
        assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"


def test_compose_single_node_redis_is_private_durable_and_checked(single: dict[str, Any]) -> None:
    _assert_redis_private(single, "redis")
    assert option(command_of(single["services"]["redis"]), "--protected-mode") == "no"  # reachable on backend only
    assert any(v.endswith(":/data") or "/data" in str(v) for v in single["services"]["redis"]["volumes"])


def test_compose_single_node_app_waits_for_redis_and_is_one_hardened_image(single: dict[str, Any]) -> None:
    for name in APP:
        assert single["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert env_of(single["services"][name])["REDIS_URL"] == "redis://redis:6379/0"
    _assert_app_hardened(single)
    _assert_variables_exist(single)
    ports = {name: published(single["services"][name]) for name in ("web", "ingest")}
    assert ports == {"web": [("127.0.0.1", "8080", "8080")], "ingest": [("127.0.0.1", "8081", "8081")]}
    assert env_of(single["services"]["web"])["PORT"] == "8080"
    assert env_of(single["services"]["ingest"])["INGEST_PORT"] == "8081"


def test_compose_names_images_ports_and_tokens_from_the_environment() -> None:
    got = compose_config(
        "single",
        BINORMAL_IMAGE="local/app:t",
        BINORMAL_REDIS_IMAGE="local/redis:t",
        BINORMAL_WEB_PORT="41001",
        BINORMAL_INGEST_PORT="41002",
        BINORMAL_TOKENS_HOST_FILE="/tmp/some/tokens",
        BINORMAL_BASE_IMAGE="local/debian:t",
    )
    services = got["services"]
    assert {services[s]["image"] for s in APP} == {"local/app:t"}
    assert services["redis"]["image"] == "local/redis:t"
    assert published(services["web"]) == [("127.0.0.1", "41001", "8080")]
    assert published(services["ingest"]) == [("127.0.0.1", "41002", "8081")]
    assert got["secrets"]["binormal_tokens"]["file"] == "/tmp/some/tokens"
    assert services["worker"]["build"]["args"]["BASE_IMAGE"] == "local/debian:t"


def test_compose_cluster_has_three_private_masters_formed_by_a_one_shot_init(cluster: dict[str, Any]) -> None:
    services = cluster["services"]
    for node in NODES:
        _assert_redis_private(cluster, node)
        cmd = command_of(services[node])
        assert option(cmd, "--cluster-enabled") == "yes", cmd
        assert option(cmd, "--cluster-announce-hostname") == node, cmd
        assert option(cmd, "--cluster-preferred-endpoint-type") == "hostname", cmd
    init = services["cluster-init"]
    script = " ".join(command_of(init))
    assert "--cluster create" in script and "--cluster-yes" in script, script
    assert init["restart"] == "no"
    assert {n: init["depends_on"][n]["condition"] for n in NODES} == dict.fromkeys(NODES, "service_healthy")
    for name in APP:
        depends = {dep: cond["condition"] for dep, cond in services[name]["depends_on"].items()}
        assert depends == {"cluster-init": "service_completed_successfully"}, name
        env = env_of(services[name])
        assert env["BINORMAL_REDIS_CLUSTER"] == "1"
        assert env["REDIS_URL"].startswith("redis://redis-1:")
    _assert_app_hardened(cluster)
    _assert_variables_exist(cluster)


def test_dockerfiles_run_as_non_root_from_a_pinned_base_argument() -> None:
    for path in (ROOT / "deploy" / "Dockerfile", ROOT / "deploy" / "redis" / "Dockerfile"):
        assert dockerfile_user(path) not in ("0", "root", "0:0"), path
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    base = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ARG BASE_IMAGE="))
    name, _, tag = base.partition(":")
    assert name == "python" and tag.count(".") == 2 and tag.endswith("-slim-bookworm"), f"unpinned base {base}"
    assert "--no-index" in text and "--find-links" in text, "the image installs from the wheelhouse only"
    assert 'ENTRYPOINT ["binormal"]' in text
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :] == ["*", "!deploy/wheelhouse/"], "the build context is the wheelhouse only"


def test_k8s_manifests_match_the_kubernetes_schemas() -> None:
    kv = _kubernetes_validate()
    docs = k8s_documents()
    kinds = sorted(doc["kind"] for _, doc in docs)
    for needed in ("ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service"):
        assert needed in kinds, f"deploy/k8s has no {needed}"
    for version in K8S_VERSIONS:
        for path, doc in docs:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']} (k8s {version}): {exc.message}")


@pytest.mark.parametrize(
    "breakage",
    ["replicas as text", "unknown field", "probe without a port", "missing selector"],
)
def test_k8s_schema_check_rejects_a_broken_manifest(breakage: str) -> None:
    kv = _kubernetes_validate()
    deployment = copy.deepcopy(_deployment("binormal-web"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if breakage == "replicas as text":
        deployment["spec"]["replicas"] = "two"
    elif breakage == "unknown field":
        container["readinessProbes"] = container.pop("readinessProbe")  # a typo strict mode must catch
    elif breakage == "probe without a port":
        del container["readinessProbe"]["httpGet"]["port"]
    else:
        del deployment["spec"]["selector"]
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSIONS[-1], strict=True)


def _deployment(name: str) -> dict[str, Any]:
    return next(d for _, d in k8s_documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == name)


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}


def test_k8s_deployments_probe_limit_and_drop_root() -> None:
    config = next(d for _, d in k8s_documents() if d["kind"] == "ConfigMap")
    known = readme_variables() | PENDING_VARIABLES
    assert set(config["data"]) <= known, sorted(set(config["data"]) - known)
    ports = {"binormal-web": ("PORT", 8080), "binormal-ingest": ("INGEST_PORT", 8081)}
    for name in ("binormal-web", "binormal-ingest", "binormal-worker"):
        pod = _deployment(name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        (container,) = pod["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        env = _container_env(container)
        assert set(env) <= known, sorted(set(env) - known)
        assert "BINORMAL_ALLOW_ANONYMOUS" not in env and "BINORMAL_ALLOW_ANONYMOUS" not in config["data"]
        if name in ports:
            variable, port = ports[name]
            assert env[variable] == str(port) and env["HOST"] == "0.0.0.0"
            (declared,) = container["ports"]
            assert declared["containerPort"] == port
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": declared["name"]}
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": declared["name"]}


def test_k8s_selectors_find_their_pods() -> None:
    docs = [d for _, d in k8s_documents()]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]

    def matches(selector: dict[str, str]) -> int:
        return sum(all(labels.get(k) == v for k, v in selector.items()) for labels in pod_labels)

    for d in deployments.values():
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    for d in docs:
        if d["kind"] == "Service":
            assert matches(d["spec"]["selector"]) == 1, d["metadata"]["name"]
        elif d["kind"] == "PodDisruptionBudget":
            assert matches(d["spec"]["selector"]["matchLabels"]) == 1, d["metadata"]["name"]
        elif d["kind"] == "HorizontalPodAutoscaler":
            assert d["spec"]["scaleTargetRef"]["name"] in deployments
            (metric,) = d["spec"]["metrics"]
            assert metric["external"]["metric"]["name"] == "binormal_stream_lag"  # common/metrics.py STREAM_LAG
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"} >= {"binormal-worker"}


def test_the_lag_gauge_named_in_the_k8s_notes_is_the_one_exported() -> None:
    from binormal.common import metrics

    assert metrics.STREAM_LAG._name == "binormal_stream_lag"
    notes = (ROOT / "deploy" / "k8s" / "README.md").read_text()
    assert 'binormal_stream_lag{shard="0"}' in notes
