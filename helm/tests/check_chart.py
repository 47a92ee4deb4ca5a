#!/usr/bin/env python3
"""Checks the stockflow Helm chart, its alert rules and its dashboard with the real tools.

    python3 helm/tests/check_chart.py [-v] [-k SUBSTRING]

- Helm's own library (PyPI helm-python-sdk, no helm binary, no cluster): `helm lint --strict`
  and rendering with every values file in helm/tests/values/, plus values that must be refused.
- kubernetes-validate --strict on every rendered core object.
- KEDA and Prometheus Operator objects against their CRD schemas in ../shared/crds (next to the
  repository, or the directory CHART_CRDS_DIR names), made strict (unknown fields are errors);
  skipped with a message when absent.
- Assertions on the rendered objects (probes, securityContext, checksum, hooks, scaling,
  secrets, monitoring), against the contract in docs/operations.md where it has the answer.
- promtool: `check rules` and `test rules` for helm/stockflow/files/alerts.yaml (every alert has
  a test that fires and one that does not), and a syntax check of every dashboard query.

Python packages go to .dev/py (pip --target, no venv); promtool comes from Debian's
`prometheus` package when it is missing. Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from queries import alert_rules, dashboard_queries, grafana_to_promql, metric_names

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "stockflow"
TESTS = ROOT / "helm" / "tests"
VALUES_DIR = TESTS / "values"
COMPANIONS = ROOT / "helm" / "companions"
OPERATIONS = ROOT / "docs" / "operations.md"
# A checkout elsewhere (a git worktree) points CHART_CRDS_DIR at the CRDs.
CRDS = Path(os.environ.get("CHART_CRDS_DIR") or ROOT.parent / "shared" / "crds")
DEPS = ROOT / ".dev" / "py"
REQUIREMENTS = [
    "helm-python-sdk==0.2.2",
    "kubernetes-validate==1.37.0",
    "jsonschema>=4.18",
    "pyyaml>=6",
]
# Kubernetes versions the core objects are validated against (kubernetes-validate ships 1.25-1.37).
KUBE_VERSIONS = ["1.30.0", "1.36.0"]
RELEASE, NAMESPACE = "stockflow", "shop"
CORE_API_VERSIONS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}
WORKERS = ["stock-worker", "order-worker", "notify-worker"]
# The connector (off by default): one replica, no autoscaler, no PodDisruptionBudget.
COMPONENTS = WORKERS + ["gateway", "connector"]
# The Secret and key of the gateway tokens the chart generates when none are given.
GATEWAY_TOKENS_SECRET, GATEWAY_TOKENS_KEY = f"{RELEASE}-gateway-tokens", "gateway-tokens"
# Given tokens for renders that must not depend on random ones (valid for the gateway).
FIXED_TOKENS = {"gateway": {"auth": {"tokens": ["write:fixed-write-token-0001", "read:fixed-read-token-00001"]}}}
# Variables the chart sets that docs/operations.md does not list yet (proposed to the Rust side);
# empty while the binaries read everything the chart sets.
PROPOSED_ENV: dict[str, str] = {}

# --------------------------------------------------------------------------------------------
# Dependencies
# --------------------------------------------------------------------------------------------


def ensure_python_deps() -> None:
    """Install the Python packages into .dev/py once (again when REQUIREMENTS change)."""
    marker = DEPS / ".requirements"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if not (marker.exists() and marker.read_text() == wanted):
        print(f"installing {', '.join(REQUIREMENTS)} into {DEPS.relative_to(ROOT)} ...", flush=True)
        DEPS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore",
             "--no-warn-script-location", "--upgrade", "--target", str(DEPS), *REQUIREMENTS],
            check=True,
        )
        marker.write_text(wanted)
    sys.path.insert(0, str(DEPS))


def _privileged(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return cmd
    if shutil.which("sudo"):
        return ["sudo", "-n", *cmd]
    raise RuntimeError("promtool is missing and installing it needs root or sudo: apt-get install prometheus")


def ensure_promtool() -> str:
    """promtool from Debian's `prometheus` package, without starting the Prometheus service."""
    found = shutil.which("promtool")
    if found:
        return found
    print("installing promtool (Debian package prometheus) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:  # forbid maintainer scripts to start services while we install
        subprocess.run(_privileged(["sh", "-c", f"printf '#!/bin/sh\\nexit 101\\n' > {policy} && chmod 755 {policy}"]), check=True)
    try:
        subprocess.run(_privileged(["apt-get", "update", "-qq"]), check=True, env=env)
        subprocess.run(_privileged(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"]),
                       check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if ours:
            subprocess.run(_privileged(["rm", "-f", str(policy)]), check=False)
    found = shutil.which("promtool")
    if not found:
        raise RuntimeError("apt-get installed prometheus but promtool is not on PATH")
    return found


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


class Results:
    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.passed: list[str] = []
        self.failed: list[tuple[str, list[str]]] = []
        self.skipped: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def check(self, name: str, problems: list[str], detail: str = "") -> None:
        if problems:
            self.failed.append((name, problems))
            print(f"FAIL  {name}")
            for p in problems[:25]:
                print(f"        - {p}")
            if len(problems) > 25:
                print(f"        ... and {len(problems) - 25} more")
        else:
            self.passed.append(name)
            print(f"ok    {name}{f'  ({detail})' if detail and self.verbose else ''}")

    def skip(self, name: str, why: str) -> None:
        self.skipped.append((name, why))
        print(f"SKIP  {name}: {why}")

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def guarded(results: Results, name: str, fn, *args):
    """Run one check function that returns a list of problems; an exception is a failure."""
    try:
        problems = fn(*args)
    except Exception as exc:  # noqa: BLE001 - a crash in a check is reported as its failure
        problems = [f"{type(exc).__name__}: {exc}"]
    results.check(name, problems)
    return problems


# --------------------------------------------------------------------------------------------
# The contract: docs/operations.md
# --------------------------------------------------------------------------------------------


class Contract:
    """What docs/operations.md says: env vars, metrics (with types), and consumers per worker."""

    def __init__(self, text: str) -> None:
        self.env = set(re.findall(r"`(STOCKFLOW_[A-Z0-9_]+)`", text))
        self.metrics: dict[str, str] = {}
        for name, kind in re.findall(r"^\|\s*`(stockflow_[a-z0-9_]+)`\s*\|\s*(counter|gauge|histogram)\s*\|", text, re.M):
            self.metrics[name] = kind
        self.consumers: dict[str, set[tuple[str, str]]] = {}
        for binary, consumes, durable in re.findall(
            r"^\|\s*`([a-z-]+-worker)`\s*\|[^|]*\|([^|]*)\|\s*`([a-z-]+)`\s*\|", text, re.M
        ):
            streams = re.findall(r"`([A-Z_]+)`", consumes)
            # A worker with a second consumer (the stock-worker's kit follower) has a second row.
            self.consumers.setdefault(binary, set()).update((s, durable) for s in streams)

    def series_names(self) -> set[str]:
        names = set()
        for name, kind in self.metrics.items():
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
        return names


def check_contract_parsed(contract: Contract) -> list[str]:
    problems = []
    if len(contract.metrics) < 10:
        problems.append(f"only {len(contract.metrics)} metrics parsed from {OPERATIONS.name}; has its table changed?")
    if set(contract.consumers) != set(WORKERS):
        problems.append(f"workers parsed from {OPERATIONS.name}: {sorted(contract.consumers)}, expected {WORKERS}")
    if "STOCKFLOW_METRICS_ADDR" not in contract.env:
        problems.append("STOCKFLOW_METRICS_ADDR not found in the environment table")
    return problems


# --------------------------------------------------------------------------------------------
# Helm: lint and render
# --------------------------------------------------------------------------------------------


def load_values(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def render_manifests(helm, values: dict, is_upgrade: bool = False, chart_dir: Path = CHART) -> dict[str, str]:
    """Template path -> rendered text, NOTES.txt included."""
    with helm.Chart.load(str(chart_dir)) as chart:
        chart.validate_schema(values)
        return chart.render(values, name=RELEASE, namespace=NAMESPACE,
                            is_install=not is_upgrade, is_upgrade=is_upgrade)


def manifest_objects(manifests: dict[str, str]) -> list[tuple[str, dict]]:
    import yaml

    objects = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append((template, doc))
    return objects


def render(helm, values: dict, is_upgrade: bool = False) -> list[tuple[str, dict]]:
    return manifest_objects(render_manifests(helm, values, is_upgrade))


def notes(manifests: dict[str, str]) -> str:
    return next((text for template, text in manifests.items() if template.endswith("NOTES.txt")), "")


def without_generated_tokens(objects: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The objects with the generated gateway tokens, and the checksums over them, blanked:
    offline every render generates new ones (`lookup` finds no installed Secret)."""
    if not named(objects, "Secret", GATEWAY_TOKENS_SECRET):
        return objects
    blanked = json.loads(json.dumps(objects))
    for _, obj in blanked:
        if obj["kind"] == "Secret" and obj["metadata"]["name"] == GATEWAY_TOKENS_SECRET:
            obj["data"] = {k: "<generated>" for k in obj["data"]}
        if obj["kind"] == "Deployment":
            obj["spec"]["template"]["metadata"]["annotations"]["checksum/config"] = "<over generated tokens>"
    return [tuple(o) for o in blanked]


def check_lint(helm, values: dict) -> list[str]:
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSIONS[0]}")
    problems = [f"{m.get('path')}: {m.get('error')}" for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    problems += [str(e) for e in report.get("errors", [])]
    return problems


def merged_values(helm, values: dict) -> dict:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.merge_values(values)


# --------------------------------------------------------------------------------------------
# Schema validation of rendered objects
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _patch_kubernetes_validate():
    """kubernetes-validate reads its big definitions file on every call; cache the reads."""
    import kubernetes_validate.utils as kvu

    kvu.schema_contents = functools.lru_cache(maxsize=None)(kvu.schema_contents)
    return kvu


def validate_core(objects: list[tuple[str, dict]]) -> list[str]:
    kvu = _patch_kubernetes_validate()
    problems = []
    for template, obj in objects:
        if obj.get("apiVersion") not in CORE_API_VERSIONS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kvu.validate(obj, version, strict=True)
            except kvu.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{obj['kind']}/{obj['metadata']['name']} (k8s {version}): {path}: {e.message}")
            except kvu.SchemaNotFoundError as e:
                problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {e.message}")
    return problems


def strict(schema):
    """Forbid fields a CRD schema does not list (the trick from shared/crds/README.md)."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            schema["additionalProperties"] = False
        for v in schema.values():
            strict(v)
    elif isinstance(schema, list):
        for v in schema:
            strict(v)
    return schema


@functools.lru_cache(maxsize=None)
def crd_schemas() -> dict:
    import yaml

    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for v in spec["versions"]:
            key = (f"{spec['group']}/{v['name']}", spec["names"]["kind"])
            schemas[key] = strict(v["schema"]["openAPIV3Schema"])
    return schemas


def validate_custom(objects: list[tuple[str, dict]]) -> list[str]:
    import jsonschema

    kvu = _patch_kubernetes_validate()
    schemas = crd_schemas()
    problems = []
    for template, obj in objects:
        if obj.get("apiVersion") in CORE_API_VERSIONS:
            continue
        key = (obj.get("apiVersion"), obj.get("kind"))
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if key not in schemas:
            problems.append(f"{name} ({template}): no schema for {key[0]} {key[1]}")
            continue
        for e in jsonschema.Draft7Validator(schemas[key]).iter_errors(obj):
            problems.append(f"{name}: {'/'.join(map(str, e.path))}: {e.message}")
        # The CRD schemas take metadata as any object: check it as Kubernetes' ObjectMeta.
        try:
            kvu.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}, KUBE_VERSIONS[-1], strict=True)
        except kvu.ValidationError as e:
            problems.append(f"{name}: metadata.{'.'.join(map(str, e.path))}: {e.message}")
    return problems


# --------------------------------------------------------------------------------------------
# Assertions on the rendered chart
# --------------------------------------------------------------------------------------------


def by_kind(objects, kind: str) -> list[dict]:
    return [o for _, o in objects if o.get("kind") == kind]


def named(objects, kind: str, name: str) -> dict | None:
    return next((o for o in by_kind(objects, kind) if o["metadata"]["name"] == name), None)


def annotations(obj) -> dict:
    return obj.get("metadata", {}).get("annotations") or {}


def component_of(obj) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/component")


def pod_spec(obj) -> dict:
    if obj["kind"] == "Pod":
        return obj["spec"]
    return obj["spec"]["template"]["spec"]


def selector_matches(selector: dict, labels: dict) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        value, op = labels.get(expr["key"]), expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return True


def fullname(name: str) -> str:
    return f"{RELEASE}-{name}"


def generated_tokens(objects) -> dict[str, str]:
    """The decoded data of the Secret of generated gateway tokens ({} when not rendered)."""
    secret = named(objects, "Secret", GATEWAY_TOKENS_SECRET) or {}
    return {k: base64.b64decode(val).decode() for k, val in (secret.get("data") or {}).items()}


class Scenario:
    """One values file, rendered, with the values Helm would really use."""

    def __init__(self, name: str, values: dict, objects, merged: dict, contract: Contract) -> None:
        self.name, self.values, self.objects, self.v, self.contract = name, values, objects, merged, contract
        self.enabled = [c for c in COMPONENTS if self.component_values(c).get("enabled")]

    def component_values(self, component: str) -> dict:
        if component == "gateway":
            return self.v["gateway"]
        if component == "connector":
            return {**self.v["connector"], "replicas": 1, "autoscaling": {"enabled": False},
                    "podDisruptionBudget": {"enabled": False}}
        return self.v["workers"][component.split("-")[0]]

    def autoscaler(self, component: str) -> str:
        cv = self.component_values(component)
        if not cv["autoscaling"]["enabled"]:
            return "none"
        if component == "gateway":
            return "hpa"
        return "keda" if self.v["keda"]["enabled"] else "hpa"

    def gateway_tokens_source(self) -> str:
        """Where the gateway's tokens come from: no gateway, no auth, existing, given or generated."""
        gateway = self.v["gateway"]
        if not gateway["enabled"]:
            return "no gateway"
        if gateway["auth"]["method"] == "none":
            return "no auth"
        if gateway["auth"]["existingSecret"]:
            return "existing"
        return "given" if gateway["auth"]["tokens"] else "generated"

    def secret_values(self) -> list[str]:
        """Every piece of secret material given as a value."""
        v = self.v
        items = [v["nats"]["auth"]["password"], v["nats"]["auth"]["token"], v["nats"]["auth"]["creds"],
                 v["nats"]["auth"]["nkeySeed"], v["nats"]["tls"]["clientCert"]["key"],
                 v["redis"]["auth"]["password"], v["redis"]["tls"]["clientCert"]["key"],
                 v["workers"]["notify"]["webhooks"]["secret"]]
        if self.gateway_tokens_source() == "given":
            items += v["gateway"]["auth"]["tokens"]
        return [s for s in items if s]

    def generated_tokens(self) -> dict[str, str]:
        return generated_tokens(self.objects)

    def existing_secrets(self) -> set[str]:
        v = self.v
        return {s for s in (v["nats"]["auth"]["existingSecret"], v["nats"]["tls"]["existingSecret"],
                            v["redis"]["auth"]["existingSecret"], v["redis"]["tls"]["existingSecret"],
                            v["nats"]["tls"]["clientCert"]["existingSecret"], v["redis"]["tls"]["clientCert"]["existingSecret"],
                            v["gateway"]["auth"]["existingSecret"], v["workers"]["notify"]["webhooks"]["existingSecret"],
                            v["connector"]["existingSecret"]) if s}


def check_deployments(s: Scenario) -> list[str]:
    problems = []
    deployments = {component_of(d): d for d in by_kind(s.objects, "Deployment")}
    if set(deployments) != set(s.enabled):
        problems.append(f"Deployments for {sorted(deployments)}, expected {sorted(s.enabled)}")
    checksums = set()
    image = s.v["image"]
    want_image = f"{image['repository']}@{image['digest']}" if image["digest"] else f"{image['repository']}:{image['tag'] or '0.1.0'}"
    config_name = RELEASE  # the chart's full name: the release name contains the chart name
    for comp, d in deployments.items():
        where = f"Deployment/{d['metadata']['name']}"
        tmpl = d["spec"]["template"]
        checksum = (tmpl["metadata"].get("annotations") or {}).get("checksum/config", "")
        if not re.fullmatch(r"[0-9a-f]{64}", checksum):
            problems.append(f"{where}: pod template has no checksum/config annotation")
        checksums.add(checksum)
        spec = tmpl["spec"]
        psc = spec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True or (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod securityContext needs runAsNonRoot and seccompProfile RuntimeDefault")
        if len(spec["containers"]) != 1:
            problems.append(f"{where}: expected one container")
        c = spec["containers"][0]
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True \
                or (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: container securityContext must forbid privilege escalation, "
                            f"mount the root filesystem read-only and drop ALL capabilities")
        if c.get("command") != [f"/usr/local/bin/{comp}"]:
            problems.append(f"{where}: command {c.get('command')}, expected [/usr/local/bin/{comp}]")
        if c.get("image") != want_image:
            problems.append(f"{where}: image {c.get('image')}, expected {want_image}")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if ports.get("metrics") != 9090:
            problems.append(f"{where}: no container port named metrics on 9090 ({ports})")
        if comp == "gateway" and ports.get("http") != 8080:
            problems.append(f"{where}: no container port named http on 8080 ({ports})")
        for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = (c.get(probe) or {}).get("httpGet") or {}
            if get.get("path") != path or get.get("port") != "metrics":
                problems.append(f"{where}: {probe} should GET {path} on port metrics, has {c.get(probe)}")
        refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
        if refs != [config_name] or not named(s.objects, "ConfigMap", config_name):
            problems.append(f"{where}: envFrom should reference the chart's ConfigMap, has {refs}")
        if s.autoscaler(comp) == "none":
            if d["spec"].get("replicas") != s.component_values(comp)["replicas"]:
                problems.append(f"{where}: replicas {d['spec'].get('replicas')}, expected {s.component_values(comp)['replicas']}")
        elif "replicas" in d["spec"]:
            problems.append(f"{where}: sets replicas although {s.autoscaler(comp)} scales it (an upgrade would reset them)")
        if s.component_values(comp)["podDisruptionBudget"]["enabled"]:
            pdbs = [p for p in by_kind(s.objects, "PodDisruptionBudget")
                    if selector_matches(p["spec"]["selector"], tmpl["metadata"]["labels"])]
            if len(pdbs) != 1:
                problems.append(f"{where}: {len(pdbs)} PodDisruptionBudgets select its pods, expected 1")
        problems += check_secret_refs(s, where, spec, generated=GATEWAY_TOKENS_SECRET)
    if len(checksums) > 1:
        problems.append("the Deployments carry different config checksums")
    grace = s.v["terminationGracePeriodSeconds"]
    if s.v["config"]["shutdownTimeoutSeconds"] >= grace:
        problems.append("shutdown timeout is not below the grace period")
    return problems


def check_secret_refs(s: Scenario, where: str, spec: dict, own_secret: str = RELEASE, generated: str = "") -> list[str]:
    """Every secret a pod reads is the chart's own Secret (rendered), the Secret of generated
    tokens where `generated` names it (rendered), or a declared existing one."""
    problems = []
    rendered = {o["metadata"]["name"] for o in by_kind(s.objects, "Secret")}
    allowed = s.existing_secrets() | ({generated} & rendered)
    names = []
    for c in spec["containers"]:
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                names.append(ref["name"])
    for vol in spec.get("volumes", []):
        for src in (vol.get("projected") or {}).get("sources", []):
            if "secret" in src:
                names.append(src["secret"]["name"])
        if "secret" in vol:
            names.append(vol["secret"]["secretName"])
    for n in names:
        if n in allowed:
            continue
        if n != own_secret or n not in rendered:
            problems.append(f"{where}: reads Secret {n!r}, which is neither rendered as {own_secret!r} nor an existingSecret")
    return problems


def check_config(s: Scenario) -> list[str]:
    problems = []
    cm = named(s.objects, "ConfigMap", RELEASE)
    if not cm:
        return ["no ConfigMap named after the release"]
    data = cm.get("data") or {}
    expect = {
        "STOCKFLOW_METRICS_ADDR": "0.0.0.0:9090",
        "STOCKFLOW_HTTP_ADDR": "0.0.0.0:8080",
        "STOCKFLOW_STREAM_REPLICAS": str(s.v["nats"]["streamReplicas"]),
        "STOCKFLOW_NATS_URL": s.v["nats"]["url"],
        "STOCKFLOW_REDIS_URL": s.v["redis"]["url"],
        "STOCKFLOW_REDIS_WAIT_REPLICAS": str(s.v["redis"]["waitReplicas"]),
    }
    for k, want in expect.items():
        if data.get(k) != want:
            problems.append(f"ConfigMap {k}={data.get(k)!r}, expected {want!r}")
    partitions = s.v["nats"]["stockPartitions"]
    if data.get("STOCKFLOW_STOCK_PARTITIONS") != (str(partitions) if partitions > 1 else None):
        problems.append(f"ConfigMap STOCKFLOW_STOCK_PARTITIONS={data.get('STOCKFLOW_STOCK_PARTITIONS')!r} for {partitions} partitions")
    # Every variable the chart sets is one the binaries read (docs/operations.md) or a known proposal.
    names = set(data)
    for _, obj in s.objects:
        if obj.get("kind") in ("Deployment", "Job", "Pod"):
            for c in pod_spec(obj)["containers"]:
                names |= {e["name"] for e in c.get("env", [])}
    for n in sorted(names):
        if n.startswith("STOCKFLOW_") and n not in s.contract.env:
            if n in PROPOSED_ENV:
                continue
            problems.append(f"{n} is set by the chart but not documented in docs/operations.md")
    # The config file paths point into the mounted secret volume.
    for k, val in data.items():
        if k.endswith("_FILE") and not val.startswith("/etc/stockflow/secrets/"):
            problems.append(f"{k}={val} is outside the mounted secret directory")
    return problems


def check_hooks(s: Scenario) -> list[str]:
    problems = []
    jobs = by_kind(s.objects, "Job")
    if not s.v["setup"]["enabled"]:
        return [f"setup Job rendered although setup.enabled is false"] if jobs else []
    if len(jobs) != 1:
        return [f"{len(jobs)} Jobs rendered, expected the setup Job"]
    job = jobs[0]
    hooks = set(annotations(job).get("helm.sh/hook", "").split(","))
    if hooks != {"pre-install", "pre-upgrade"}:
        problems.append(f"setup Job hook is {hooks}, expected pre-install,pre-upgrade")
    spec = pod_spec(job)
    c = spec["containers"][0]
    if c.get("command") != ["/usr/local/bin/stockctl", "setup"]:
        problems.append(f"setup Job command {c.get('command')}")
    env = {e["name"]: e for e in c.get("env", [])}
    replicas = (env.get("STOCKFLOW_STREAM_REPLICAS") or {}).get("value")
    if replicas != str(s.v["nats"]["streamReplicas"]):
        problems.append(f"setup Job STOCKFLOW_STREAM_REPLICAS={replicas!r}, expected {s.v['nats']['streamReplicas']}")
    cm = named(s.objects, "ConfigMap", RELEASE)
    inline = {k: e.get("value") for k, e in env.items() if "value" in e}
    if cm and inline != cm.get("data"):
        problems.append("setup Job's inline environment differs from the ConfigMap")
    if c.get("envFrom"):
        problems.append("setup Job uses envFrom: the ConfigMap does not exist yet when a pre-install hook runs")
    if spec.get("restartPolicy") not in ("Never", "OnFailure"):
        problems.append("setup Job needs restartPolicy Never or OnFailure")
    # Secrets created from values reach the hook through a hook-scoped Secret that is created first.
    hook_secret = named(s.objects, "Secret", f"{RELEASE}-setup")
    own = named(s.objects, "Secret", RELEASE)
    if own and not hook_secret:
        problems.append("the chart creates a Secret but the setup hook has no pre-install copy of it")
    if hook_secret:
        ha = annotations(hook_secret)
        if set(ha.get("helm.sh/hook", "").split(",")) != {"pre-install", "pre-upgrade"} \
                or int(ha.get("helm.sh/hook-weight", "0")) >= int(annotations(job).get("helm.sh/hook-weight", "0")):
            problems.append("the hook Secret must be a pre-install/pre-upgrade hook with a lower weight than the Job")
        if own and hook_secret.get("data") != own.get("data"):
            problems.append("the hook Secret's data differs from the chart's Secret")
    problems += check_secret_refs(s, "setup Job", spec, own_secret=f"{RELEASE}-setup")
    sa = spec.get("serviceAccountName")
    if s.v["serviceAccount"]["create"] and sa != "default":
        problems.append(f"setup Job uses ServiceAccount {sa!r}, which a pre-install hook cannot rely on")
    # helm test
    pods = by_kind(s.objects, "Pod")
    tests = [p for p in pods if annotations(p).get("helm.sh/hook") == "test"]
    if len(tests) != 1:
        problems.append(f"{len(tests)} helm test Pods, expected 1")
    else:
        t = tests[0]
        tc = t["spec"]["containers"][0]
        if tc.get("command") != ["/usr/local/bin/stockctl", "selftest"]:
            problems.append(f"test Pod command {tc.get('command')}")
        if t["spec"].get("restartPolicy") != "Never":
            problems.append("test Pod needs restartPolicy Never")
        problems += check_secret_refs(s, "test Pod", t["spec"])
    return problems


def check_secrets(s: Scenario) -> list[str]:
    """Secret material never lands in a ConfigMap, an env value, a label or an annotation."""
    problems = []
    secrets = s.secret_values()
    material = secrets + list(s.generated_tokens().values())
    for _, obj in s.objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        places = []
        if kind == "ConfigMap":
            places += [(f"data.{k}", str(v)) for k, v in (obj.get("data") or {}).items()]
        if kind in ("Deployment", "Job", "Pod"):
            for c in pod_spec(obj)["containers"]:
                places += [(f"env {e['name']}", str(e.get("value", ""))) for e in c.get("env", [])]
        places += [(f"annotation {k}", str(v)) for k, v in annotations(obj).items()]
        places += [(f"label {k}", str(v)) for k, v in (obj["metadata"].get("labels") or {}).items()]
        for where, text in places:
            for secret in material:
                if secret in text:
                    problems.append(f"{kind}/{name} {where} contains secret material ({secret[:6]}...)")
    own = named(s.objects, "Secret", RELEASE)
    stored = {base64.b64decode(v).decode() for v in ((own or {}).get("data") or {}).values()}
    for secret in secrets:
        if not any(secret in text for text in stored):
            problems.append(f"secret value {secret[:6]}... given in values is missing from Secret/{RELEASE}")
    if not secrets and own:
        problems.append(f"Secret/{RELEASE} rendered although no secret is given as a value")
    return problems


# --------------------------------------------------------------------------------------------
# Gateway tokens
# --------------------------------------------------------------------------------------------

GATEWAY_SCOPES = ("read", "write", "admin")
MIN_TOKEN_BYTES = 16
# Generated tokens must be far beyond the gateway's minimum: they are all that guards the API.
MIN_GENERATED_TOKEN_CHARS = 32


def parse_gateway_tokens(text: str) -> list[tuple[str, str]]:
    """The (scope, token) entries of a STOCKFLOW_GATEWAY_TOKENS value; ValueError naming the entry.

    Mirrors `Tokens::parse` in workers/gateway/src/auth.rs (keep the two in step), so a value
    accepted here is one the gateway starts with: entries separated by commas or newlines, lines
    starting with `#` skipped, blanks ignored; each entry `scope:token`, scope read, write or
    admin, the token at least 16 bytes of printable ASCII without spaces.
    """
    entries = []
    # Rust's str::lines splits at \n only and drops a \r before it; str.splitlines splits at more.
    lines = (line.removesuffix("\r").strip() for line in text.split("\n"))
    items = (item.strip() for line in lines if not line.startswith("#") for item in line.split(","))
    for n, item in enumerate((item for item in items if item), start=1):
        scope, colon, token = item.partition(":")
        if not colon:
            raise ValueError(f"entry {n}: is not scope:token")
        if scope.strip() not in GATEWAY_SCOPES:
            raise ValueError(f"entry {n}: scope {scope.strip()!r} is not read, write or admin")
        raw = token.encode()
        if len(raw) < MIN_TOKEN_BYTES:
            raise ValueError(f"entry {n}: the token is shorter than {MIN_TOKEN_BYTES} bytes")
        if not all(0x21 <= b <= 0x7E for b in raw):
            raise ValueError(f"entry {n}: the token must be printable ASCII without spaces")
        entries.append((scope.strip(), token))
    return entries


def check_token_parser() -> list[str]:
    """The validator itself accepts and refuses what the gateway does (auth.rs's own cases)."""
    problems = []
    accepted = {
        "read:rrrrrrrrrrrrrrrrrrrr, write:wwwwwwwwwwwwwwwwwwww\n# ops\nadmin:aaaaaaaaaaaaaaaaaaaa":
            [("read", "r" * 20), ("write", "w" * 20), ("admin", "a" * 20)],
        "write:dev-write-token-0001\r\n\n,read:dev-read-token-00001,":
            [("write", "dev-write-token-0001"), ("read", "dev-read-token-00001")],
        "": [],
    }
    for text, want in accepted.items():
        try:
            got = parse_gateway_tokens(text)
        except ValueError as e:
            problems.append(f"{text!r} refused ({e}), the gateway accepts it")
            continue
        if got != want:
            problems.append(f"{text!r} parsed as {got}, expected {want}")
    for text in ["reader:xxxxxxxxxxxxxxxxxxxx", "write:tiny", "xxxxxxxxxxxxxxxxxxxx",
                 "write: xxxxxxxxxxxxxxxxxxxx", "read:xxxxxxxx xxxxxxxxxxxx", "read:xxxxxxxxxxxxxxxxxxx\u00e9"]:
        try:
            parse_gateway_tokens(text)
            problems.append(f"{text!r} accepted, the gateway refuses it")
        except ValueError:
            pass
    return problems


def token_env(spec: dict) -> list[dict]:
    return [e for c in spec["containers"] for e in c.get("env", []) if e["name"] == "STOCKFLOW_GATEWAY_TOKENS"]


def check_gateway_tokens(s: Scenario) -> list[str]:
    """The gateway gets its tokens from exactly one place, as a secretKeyRef, and only it does."""
    problems = []
    source = s.gateway_tokens_source()
    auth = s.v["gateway"]["auth"]
    generated = s.generated_tokens()
    own = named(s.objects, "Secret", RELEASE) or {}
    own_data = {k: base64.b64decode(val).decode() for k, val in (own.get("data") or {}).items()}
    if bool(generated) != (source == "generated"):
        problems.append(f"tokens {source}, yet Secret/{GATEWAY_TOKENS_SECRET} is {'' if generated else 'not '}rendered")
    if ("STOCKFLOW_GATEWAY_TOKENS" in own_data) != (source == "given"):
        has = "has" if "STOCKFLOW_GATEWAY_TOKENS" in own_data else "lacks"
        problems.append(f"tokens {source}, yet Secret/{RELEASE} {has} STOCKFLOW_GATEWAY_TOKENS")
    want_ref = {
        "generated": {"name": GATEWAY_TOKENS_SECRET, "key": GATEWAY_TOKENS_KEY},
        "given": {"name": RELEASE, "key": "STOCKFLOW_GATEWAY_TOKENS"},
        "existing": {"name": auth["existingSecret"], "key": auth["existingSecretKey"]},
    }.get(source)
    for _, obj in s.objects:
        if obj["kind"] not in ("Deployment", "Job", "Pod"):
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        env = token_env(pod_spec(obj))
        is_gateway = obj["kind"] == "Deployment" and component_of(obj) == "gateway"
        if not is_gateway:
            if env:
                problems.append(f"{where} gets STOCKFLOW_GATEWAY_TOKENS")
            continue
        refs = [(e.get("valueFrom") or {}).get("secretKeyRef") for e in env]
        if any("value" in e for e in env):
            problems.append(f"{where}: STOCKFLOW_GATEWAY_TOKENS as a plain value")
        if want_ref is None and env:
            problems.append(f"{where}: STOCKFLOW_GATEWAY_TOKENS set although tokens are {source}")
        if want_ref is not None and refs != [want_ref]:
            problems.append(f"{where}: STOCKFLOW_GATEWAY_TOKENS from {refs}, expected the secretKeyRef {want_ref}")
        auth_env = [e for e in pod_spec(obj)["containers"][0].get("env", []) if e["name"] == "STOCKFLOW_GATEWAY_AUTH"]
        want_auth = [{"name": "STOCKFLOW_GATEWAY_AUTH", "value": "none"}] if source == "no auth" else []
        if auth_env != want_auth:
            problems.append(f"{where}: STOCKFLOW_GATEWAY_AUTH env {auth_env}, expected {want_auth}")
    if source == "given":
        entries = own_data.get("STOCKFLOW_GATEWAY_TOKENS", "")
        if entries != ",".join(auth["tokens"]):
            problems.append(f"Secret/{RELEASE} STOCKFLOW_GATEWAY_TOKENS is not the given tokens verbatim, joined with commas")
    if source == "generated":
        problems += check_generated_tokens(generated)
        secret = named(s.objects, "Secret", GATEWAY_TOKENS_SECRET)
        if secret.get("type") != "Opaque" or component_of(secret) != "gateway":
            problems.append(f"Secret/{GATEWAY_TOKENS_SECRET}: expected type Opaque and component gateway")
        # Nothing but their Secret holds them in plain text (its data is base64).
        for _, obj in s.objects:
            text = json.dumps(obj)
            for key, token in generated.items():
                if token in text:
                    problems.append(f"{obj['kind']}/{obj['metadata']['name']} holds the generated {key} in plain text")
    return problems


def check_generated_tokens(data: dict[str, str]) -> list[str]:
    """The data of a Secret of generated tokens: a write and a read token the gateway accepts."""
    problems = []
    if set(data) != {GATEWAY_TOKENS_KEY, "write-token", "read-token"}:
        return [f"generated tokens Secret has keys {sorted(data)}, expected {GATEWAY_TOKENS_KEY}, write-token, read-token"]
    try:
        entries = parse_gateway_tokens(data[GATEWAY_TOKENS_KEY])
    except ValueError as e:
        return [f"the gateway would refuse the generated {GATEWAY_TOKENS_KEY}: {e}"]
    if entries != [("write", data["write-token"]), ("read", data["read-token"])]:
        problems.append(f"{GATEWAY_TOKENS_KEY} is not write:<write-token>,read:<read-token> "
                        f"(scopes {[scope for scope, _ in entries]})")
    for key in ("write-token", "read-token"):
        if len(data[key]) < MIN_GENERATED_TOKEN_CHARS:
            problems.append(f"generated {key} has {len(data[key])} characters, expected at least {MIN_GENERATED_TOKEN_CHARS}")
    if data["write-token"] == data["read-token"]:
        problems.append("the generated write and read tokens are the same")
    return problems


def check_tokens_random(helm) -> list[str]:
    """Two default renders generate different tokens (random, not a constant), and the pods'
    checksum follows them, so new tokens restart the gateway."""
    renders = [render(helm, {}) for _ in range(2)]
    tokens = [generated_tokens(objects) for objects in renders]
    checksums = [by_kind(objects, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                 for objects in renders]
    problems = []
    for data in tokens:
        problems += check_generated_tokens(data)
    if problems:
        return problems
    for key in ("write-token", "read-token"):
        if tokens[0][key] == tokens[1][key]:
            problems.append(f"two renders generated the same {key}")
    if checksums[0] == checksums[1]:
        problems.append("checksum/config ignores the generated tokens: new ones would not restart the gateway")
    return problems


# A template added to a copy of the chart: offline `lookup` finds nothing, so it hands the helper
# the data of an installed Secret (what `lookup` returns on an upgrade, base64 values), and shows
# what `stockflow.secrets` (which checksum/config hashes) holds in the same render.
TOKEN_PROBE = """\
{{- $kept := dict "write-token" (b64enc "%(write)s") "read-token" (b64enc "%(read)s") }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: token-probe
data:
  kept: {{ include "stockflow.gatewayTokensKeptOrNew" $kept | fromYaml | toJson | quote }}
  halfKept: {{ include "stockflow.gatewayTokensKeptOrNew" (omit $kept "read-token") | fromYaml | toJson | quote }}
  inSecrets: {{ (include "stockflow.secrets" . | fromYaml).generated | toJson | quote }}
"""


def check_tokens_kept(helm) -> list[str]:
    """An installed Secret's tokens are kept on upgrade; the tokens are computed once per render."""
    installed = {"write": f"installed-write-{os.urandom(8).hex()}", "read": f"installed-read-{os.urandom(8).hex()}"}
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "stockflow"
        shutil.copytree(CHART, chart)
        (chart / "templates" / "token-probe.yaml").write_text(TOKEN_PROBE % installed)
        objects = manifest_objects(render_manifests(helm, {}, is_upgrade=True, chart_dir=chart))
    probe = {k: json.loads(v) for k, v in named(objects, "ConfigMap", "token-probe")["data"].items()}
    problems = []
    want = {"write-token": installed["write"], "read-token": installed["read"],
            GATEWAY_TOKENS_KEY: f"write:{installed['write']},read:{installed['read']}"}
    if probe["kept"] != want:
        changed = sorted(k for k in want if probe["kept"].get(k) != want[k])
        problems.append(f"an installed Secret's tokens are not kept: {', '.join(changed)} changed")
    half = probe["halfKept"]
    problems += [f"an installed Secret without read-token: {p}" for p in check_generated_tokens(half)]
    if half.get("write-token") == installed["write"]:
        problems.append("an installed Secret without read-token: its write-token is kept next to a new read token")
    secret = generated_tokens(objects)
    if probe["inSecrets"] != secret:
        problems.append(f"Secret/{GATEWAY_TOKENS_SECRET} and stockflow.secrets (the checksum's input) hold different tokens")
    return problems


# Renders that must fail because the gateway would get no usable tokens, and the value each
# failure must name, so whoever reads it knows what to change.
NO_TOKENS = [
    ({"gateway": {"env": [{"name": "STOCKFLOW_GATEWAY_TOKENS", "value": ""}]}}, "gateway.env STOCKFLOW_GATEWAY_TOKENS"),
    ({"gateway": {"env": [{"name": "STOCKFLOW_GATEWAY_TOKENS_FILE", "value": "/t"}]}}, "gateway.env STOCKFLOW_GATEWAY_TOKENS_FILE"),
    ({"config": {"extra": {"STOCKFLOW_GATEWAY_TOKENS": ""}}}, "config.extra.STOCKFLOW_GATEWAY_TOKENS"),
    ({"config": {"extra": {"STOCKFLOW_GATEWAY_TOKENS_FILE": "/t"}}}, "config.extra.STOCKFLOW_GATEWAY_TOKENS_FILE"),
]

# A template added to a copy of the chart: offline `lookup` finds nothing, so it hands the check
# of gateway.auth.existingSecret the Secret an installed cluster would return (base64 data).
SECRET_PROBE = """\
{{- $found := dict "data" (dict "gateway-tokens" (b64enc "%(text)s")) }}
{{- include "stockflow.checkGatewayTokensSecret" (dict "auth" (dict "existingSecret" "shop-tokens" "existingSecretKey" "%(key)s") "found" $found) }}
"""


def check_no_tokens_fails_naming_the_value(helm) -> list[str]:
    """A gateway that would refuse to start for want of tokens fails the render instead, and the
    message names the value to change."""
    problems = []
    for values, named_value in NO_TOKENS:
        try:
            render_manifests(helm, values)
            problems.append(f"{named_value}: rendered without error")
        except helm.HelmError as e:
            if named_value not in str(e) or "gateway.auth.tokens" not in str(e):
                problems.append(f"{named_value}: the failure does not name it and gateway.auth.tokens: {e}")
    cases = [  # (Secret text, key, must fail)
        ("", "gateway-tokens", True),
        ("# only a comment\\n , ", "gateway-tokens", True),
        ("write:a-long-enough-token-123", "other-key", True),
        ("write:a-long-enough-token-123", "gateway-tokens", False),
    ]
    for text, key, must_fail in cases:
        with tempfile.TemporaryDirectory() as tmp:
            chart = Path(tmp) / "stockflow"
            shutil.copytree(CHART, chart)
            (chart / "templates" / "secret-probe.yaml").write_text(SECRET_PROBE % {"text": text, "key": key})
            try:
                render_manifests(helm, {}, chart_dir=chart)
                if must_fail:
                    problems.append(f"an existing Secret with {text!r} under {key}: rendered without error")
            except helm.HelmError as e:
                if not must_fail:
                    problems.append(f"an existing Secret with {text!r} under {key}: refused ({e})")
                elif "gateway.auth.existingSecret" not in str(e) or f"gateway.auth.existingSecretKey={key}" not in str(e):
                    problems.append(f"an existing Secret with {text!r} under {key}: the failure does not name the values: {e}")
    return problems


def check_tokens_everywhere(helm, contract: Contract) -> list[str]:
    """Cases no values file covers: no gateway, and every source's release notes."""
    problems = []
    cases = {
        "no gateway": {"gateway": {"enabled": False}},
        "no auth": {"gateway": {"auth": {"method": "none"}}},
        "given": FIXED_TOKENS,
        "existing": {"gateway": {"auth": {"existingSecret": "shop-gateway", "existingSecretKey": "entries"}}},
        "generated": {},
    }
    for source, values in cases.items():
        manifests = render_manifests(helm, values)
        s = Scenario(source, values, manifest_objects(manifests), merged_values(helm, values), contract)
        if s.gateway_tokens_source() != source:
            problems.append(f"{values}: tokens {s.gateway_tokens_source()}, expected {source}")
        problems += [f"{source}: {p}" for p in check_gateway_tokens(s) + check_secrets(s)]
        text = notes(manifests)
        for token in [*s.generated_tokens().values(), *s.secret_values()]:
            if token in text:
                problems.append(f"{source}: the release notes show a token")
        read_secret = f"kubectl -n {NAMESPACE} get secret {GATEWAY_TOKENS_SECRET} -o jsonpath="
        want = {
            "no gateway": [],
            "no auth": ["gateway.auth.method=none"],
            "given": ["gateway.auth.tokens"],
            "existing": ["Secret shop-gateway, key entries"],
            "generated": [read_secret + "'{.data.write-token}' | base64 -d", read_secret + "'{.data.read-token}' | base64 -d"],
        }[source]
        for line in want:
            if line not in text:
                problems.append(f"{source}: the release notes lack {line!r}")
        if source != "generated" and GATEWAY_TOKENS_SECRET in text:
            problems.append(f"{source}: the release notes mention {GATEWAY_TOKENS_SECRET}")
    return problems


def stock_mapping(partitions: int) -> str:
    """The servers' subject mappings for `partitions` partitions (stock input, ledger, rejections),
    as proto/src/subjects.rs (`stock_mappings`) writes them."""
    target = f"{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"
    return "mappings = { " + ", ".join(
        f'"stock.{kind}.*": "stock.{kind}.{target}"' for kind in ("events", "changes", "outcomes")) + " }"


PARTITIONED_STREAMS = ("STOCK_EVENTS", "STOCK_CHANGES")


def expected_consumers(s: Scenario, comp: str) -> set[tuple[str, str]]:
    """The consumers docs/operations.md names for `comp`, the stock input's and the ledger's once
    per partition stream STOCK_EVENTS_<p> / STOCK_CHANGES_<p> when nats.stockPartitions > 1."""
    partitions = s.v["nats"]["stockPartitions"]
    want = set()
    for stream, durable in s.contract.consumers.get(comp, set()):
        if stream in PARTITIONED_STREAMS and partitions > 1:
            want |= {(f"{stream}_{p}", durable) for p in range(partitions)}
        else:
            want.add((stream, durable))
    return want


def check_stock_partitions(helm) -> list[str]:
    """nats.stockPartitions: unset, the default render has no trace of partitions; at 4, the
    ConfigMap, every ScaledObject trigger of the stock-worker, the notify-worker's ledger triggers
    and the release notes (all three mappings) follow."""
    problems = []
    for partitions in (1, 4):
        values = {**FIXED_TOKENS, "nats": {"stockPartitions": partitions}} if partitions > 1 else dict(FIXED_TOKENS)
        manifests = render_manifests(helm, values)
        objects = manifest_objects(manifests)
        data = named(objects, "ConfigMap", RELEASE)["data"]
        got_var = data.get("STOCKFLOW_STOCK_PARTITIONS")
        if got_var != (str(partitions) if partitions > 1 else None):
            problems.append(f"{partitions} partitions: STOCKFLOW_STOCK_PARTITIONS={got_var!r}")
        scaled = {component_of(o): o for o in by_kind(objects, "ScaledObject")}
        stock = [(t["metadata"]["stream"], t["metadata"]["consumer"]) for t in scaled["stock-worker"]["spec"]["triggers"]]
        want = ([(f"STOCK_EVENTS_{p}", "stock-worker") for p in range(partitions)] if partitions > 1
                else [("STOCK_EVENTS", "stock-worker")])
        # Channel definitions are one stream whatever the partitions; the kit follower reads the
        # ledger, once per partition.
        want.append(("CHANNEL_EVENTS", "stock-worker"))
        want += ([(f"STOCK_CHANGES_{p}", "stock-kits") for p in range(partitions)] if partitions > 1
                 else [("STOCK_CHANGES", "stock-kits")])
        if stock != want:
            problems.append(f"{partitions} partitions: stock-worker triggers {stock}, expected {want}")
        others = [t["metadata"]["stream"] for c, o in scaled.items() if c != "stock-worker" for t in o["spec"]["triggers"]]
        if any(st.startswith("STOCK_EVENTS") for st in others):
            problems.append(f"{partitions} partitions: another worker reads the stock input: {others}")
        notify = [(t["metadata"]["stream"], t["metadata"]["consumer"]) for t in scaled["notify-worker"]["spec"]["triggers"]]
        ledger = [t for t in notify if t[0].startswith("STOCK_CHANGES")]
        want = ([(f"STOCK_CHANGES_{p}", "notify-worker") for p in range(partitions)] if partitions > 1
                else [("STOCK_CHANGES", "notify-worker")])
        if ledger != want:
            problems.append(f"{partitions} partitions: notify-worker ledger triggers {ledger}, expected {want}")
        if len(notify) != len(want) + 3:
            problems.append(f"{partitions} partitions: notify-worker triggers {notify}, expected alerts, order results, "
                            f"channel quantities and {want}")
        if ("AVAILABILITY", "notify-worker") not in notify:
            problems.append(f"{partitions} partitions: notify-worker triggers {notify} lack the channel quantities (AVAILABILITY)")
        readers = [t["metadata"]["stream"] for c, o in scaled.items() if c != "notify-worker" for t in o["spec"]["triggers"]
                   if t["metadata"]["consumer"] != "stock-kits"]
        if any(st.startswith("STOCK_CHANGES") for st in readers):
            problems.append(f"{partitions} partitions: another worker reads the ledger: {readers}")
        text = notes(manifests)
        if partitions > 1 and stock_mapping(partitions) not in text:
            problems.append(f"{partitions} partitions: the release notes lack {stock_mapping(partitions)!r}:\n{text}")
        if partitions == 1 and "mappings" in text:
            problems.append("1 partition: the release notes mention a mapping")
    return problems


def check_scaling(s: Scenario) -> list[str]:
    problems = []
    scaled = {component_of(o): o for o in by_kind(s.objects, "ScaledObject")}
    hpas = {component_of(o): o for o in by_kind(s.objects, "HorizontalPodAutoscaler")}
    if not s.v["keda"]["enabled"] and scaled:
        problems.append(f"KEDA is off but ScaledObjects are rendered for {sorted(scaled)}")
    endpoint = s.v["keda"]["natsMonitoringEndpoint"] or f"nats-headless.{NAMESPACE}.svc.cluster.local:8222"
    for comp in s.enabled:
        mode, cv = s.autoscaler(comp), s.component_values(comp)
        deploy = fullname(comp)
        if mode == "keda":
            so = scaled.get(comp)
            if comp in hpas:
                problems.append(f"{comp}: both a ScaledObject and an HPA")
            if not so:
                problems.append(f"{comp}: no ScaledObject")
                continue
            spec = so["spec"]
            if spec["scaleTargetRef"]["name"] != deploy:
                problems.append(f"{comp}: ScaledObject targets {spec['scaleTargetRef']['name']}, expected {deploy}")
            if (spec.get("minReplicaCount"), spec.get("maxReplicaCount")) != (cv["autoscaling"]["minReplicas"], cv["autoscaling"]["maxReplicas"]):
                problems.append(f"{comp}: ScaledObject replicas {spec.get('minReplicaCount')}..{spec.get('maxReplicaCount')}")
            got = set()
            for t in spec["triggers"]:
                md = t["metadata"]
                if t["type"] != "nats-jetstream":
                    problems.append(f"{comp}: trigger type {t['type']}")
                missing = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold",
                           "activationLagThreshold"} - set(md)
                if missing:
                    problems.append(f"{comp}: trigger lacks {sorted(missing)}")
                if md.get("natsServerMonitoringEndpoint") != endpoint:
                    problems.append(f"{comp}: monitoring endpoint {md.get('natsServerMonitoringEndpoint')}, expected {endpoint}")
                if md.get("lagThreshold") != str(cv["autoscaling"]["lagThreshold"]):
                    problems.append(f"{comp}: lagThreshold {md.get('lagThreshold')}")
                got.add((md.get("stream"), md.get("consumer")))
            want = expected_consumers(s, comp)
            if got != want:
                problems.append(f"{comp}: triggers read {sorted(got)}, docs/operations.md says {sorted(want)}")
        elif mode == "hpa":
            h = hpas.get(comp)
            if comp in scaled:
                problems.append(f"{comp}: a ScaledObject although it is scaled by an HPA")
            if not h:
                problems.append(f"{comp}: no HorizontalPodAutoscaler")
                continue
            if h["spec"]["scaleTargetRef"] != {"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy}:
                problems.append(f"{comp}: HPA targets {h['spec']['scaleTargetRef']}")
            cpu = [m for m in h["spec"].get("metrics", []) if m.get("type") == "Resource" and m["resource"]["name"] == "cpu"]
            if len(cpu) != 1 or cpu[0]["resource"]["target"].get("averageUtilization") != cv["autoscaling"]["targetCPUUtilizationPercentage"]:
                problems.append(f"{comp}: HPA lacks the CPU utilisation target")
        else:
            if comp in scaled or comp in hpas:
                problems.append(f"{comp}: autoscaling is off but an autoscaler is rendered")
    return problems


def check_network(s: Scenario) -> list[str]:
    problems = []
    if "gateway" not in s.enabled:
        return problems
    svc = named(s.objects, "Service", fullname("gateway"))
    gw = next(d for d in by_kind(s.objects, "Deployment") if component_of(d) == "gateway")
    if not svc:
        return ["no gateway Service"]
    if not selector_matches({"matchLabels": svc["spec"]["selector"]}, gw["spec"]["template"]["metadata"]["labels"]):
        problems.append("gateway Service does not select the gateway pods")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    if ports.get("http", {}).get("targetPort") != "http":
        problems.append("gateway Service has no http port targeting the container's http port")
    for ing in by_kind(s.objects, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                if p["backend"]["service"]["name"] != svc["metadata"]["name"]:
                    problems.append(f"Ingress backend {p['backend']['service']['name']} is not the gateway Service")
    if s.v["gateway"]["ingress"]["enabled"] and not by_kind(s.objects, "Ingress"):
        problems.append("gateway.ingress.enabled but no Ingress")
    return problems


def check_monitoring(s: Scenario) -> list[str]:
    import yaml

    problems = []
    m = s.v["monitoring"]
    expected = {"PodMonitor": m["podMonitor"]["enabled"], "ServiceMonitor": m["serviceMonitor"]["enabled"],
                "PrometheusRule": m["prometheusRule"]["enabled"]}
    for kind, on in expected.items():
        n = len(by_kind(s.objects, kind))
        if n != (1 if on else 0):
            problems.append(f"{n} {kind} rendered, expected {1 if on else 0}")
    dashboards = [c for c in by_kind(s.objects, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    if len(dashboards) != (1 if m["dashboard"]["enabled"] else 0):
        problems.append(f"{len(dashboards)} dashboard ConfigMaps, expected {1 if m['dashboard']['enabled'] else 0}")
    pods = {component_of(d): d["spec"]["template"]["metadata"]["labels"] for d in by_kind(s.objects, "Deployment")}
    other_pods = [o["spec"]["template"]["metadata"]["labels"] for o in by_kind(s.objects, "Job")]
    other_pods += [o["metadata"]["labels"] for o in by_kind(s.objects, "Pod")]
    for pm in by_kind(s.objects, "PodMonitor"):
        if pm["spec"].get("jobLabel") != "app.kubernetes.io/component":
            problems.append("PodMonitor must set jobLabel app.kubernetes.io/component (the alerts match job=<component>)")
        for comp, labels in pods.items():
            if not selector_matches(pm["spec"]["selector"], labels):
                problems.append(f"PodMonitor does not select {comp}")
        if any(selector_matches(pm["spec"]["selector"], l) for l in other_pods):
            problems.append("PodMonitor selects the setup Job or the test Pod")
        if [e.get("port") for e in pm["spec"]["podMetricsEndpoints"]] != ["metrics"]:
            problems.append("PodMonitor must scrape the port named metrics")
    for sm in by_kind(s.objects, "ServiceMonitor"):
        if sm["spec"].get("jobLabel") != "app.kubernetes.io/component":
            problems.append("ServiceMonitor must set jobLabel app.kubernetes.io/component")
        services = [svc for svc in by_kind(s.objects, "Service") if selector_matches(sm["spec"]["selector"], svc["metadata"]["labels"])]
        covered = set()
        for svc in services:
            if "metrics" not in {p["name"] for p in svc["spec"]["ports"]}:
                problems.append(f"ServiceMonitor selects Service/{svc['metadata']['name']} without a metrics port")
            for comp, labels in pods.items():
                if selector_matches({"matchLabels": svc["spec"]["selector"]}, labels):
                    covered.add(comp)
        if covered != set(pods):
            problems.append(f"ServiceMonitor reaches {sorted(covered)}, expected {sorted(pods)}")
    alerts_file = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    for pr in by_kind(s.objects, "PrometheusRule"):
        if pr["spec"] != alerts_file:
            problems.append("PrometheusRule spec differs from files/alerts.yaml")
    dashboard_file = json.loads((CHART / "files" / "dashboard.json").read_text())
    for cm in dashboards:
        if (cm["metadata"].get("labels") or {}).get("grafana_dashboard") != "1":
            problems.append("dashboard ConfigMap lacks the label grafana_dashboard: \"1\"")
        data = cm.get("data") or {}
        if len(data) != 1 or json.loads(next(iter(data.values()))) != dashboard_file:
            problems.append("dashboard ConfigMap does not hold files/dashboard.json")
    return problems


def check_webhooks(s: Scenario) -> list[str]:
    """The subscriptions reach the notify worker as the file STOCKFLOW_WEBHOOKS_FILE names."""
    problems = []
    cm = named(s.objects, "ConfigMap", f"{RELEASE}-webhooks")
    if not cm:
        return ["webhooks: no ConfigMap <release>-webhooks"]
    rendered = json.loads((cm.get("data") or {}).get("webhooks.json", "null"))
    if rendered != {"subscriptions": s.v["workers"]["notify"]["webhooks"]["subscriptions"]}:
        problems.append(f"webhooks: ConfigMap holds {rendered}, not the subscriptions from values")
    notify = [d for d in by_kind(s.objects, "Deployment") if component_of(d) == "notify-worker"]
    if len(notify) != 1:
        return problems + ["webhooks: no notify-worker Deployment"]
    spec = pod_spec(notify[0])
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    path = env.get("STOCKFLOW_WEBHOOKS_FILE") or ""
    if volumes.get("webhooks", {}).get("configMap", {}).get("name") != f"{RELEASE}-webhooks":
        problems.append("webhooks: the ConfigMap is not a volume of the notify pods")
    if not mounts.get("webhooks") or path != f"{mounts['webhooks']}/webhooks.json":
        problems.append(f"webhooks: STOCKFLOW_WEBHOOKS_FILE={path!r} is not the mounted file")
    if "checksum/webhooks" not in (notify[0]["spec"]["template"]["metadata"].get("annotations") or {}):
        problems.append("webhooks: a subscription change would not roll the notify pods")
    for d in by_kind(s.objects, "Deployment"):
        if d is not notify[0] and any(e["name"] == "STOCKFLOW_WEBHOOKS_FILE" for e in pod_spec(d)["containers"][0].get("env", [])):
            problems.append(f"webhooks: {component_of(d)} gets STOCKFLOW_WEBHOOKS_FILE")
    return problems


# Per values file: what must be true beyond the general checks.
def expectations(s: Scenario) -> list[str]:
    problems = []
    kinds = {o["kind"] for _, o in s.objects}
    if s.name == "defaults.yaml":
        if kinds & {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Ingress"}:
            problems.append(f"defaults render opt-in objects: {sorted(kinds & {'PodMonitor', 'ServiceMonitor', 'PrometheusRule', 'Ingress'})}")
        if len(by_kind(s.objects, "ScaledObject")) != 3:
            problems.append("defaults: expected a ScaledObject per worker")
        if {component_of(h) for h in by_kind(s.objects, "HorizontalPodAutoscaler")} != {"gateway"}:
            problems.append("defaults: expected exactly one HPA, for the gateway")
        secrets = [o["metadata"]["name"] for o in by_kind(s.objects, "Secret")]
        if secrets != [GATEWAY_TOKENS_SECRET]:
            problems.append(f"defaults: Secrets {secrets}, expected only the generated {GATEWAY_TOKENS_SECRET}")
        # The notify fan-out never waits for an endpoint: the shared window is enough.
        problems += check_in_flight(s, {})
        problems += check_webhook_retries(s, {
            "STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS": "1000",
            "STOCKFLOW_WEBHOOK_BACKOFF_CEILING_MILLIS": "300000",
            "STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS": "86400",
        })
    elif s.name == "keda-off.yaml":
        if by_kind(s.objects, "ScaledObject"):
            problems.append("KEDA off: ScaledObjects rendered")
        want = {c for c in s.enabled if s.component_values(c)["autoscaling"]["enabled"]}
        got = {component_of(h) for h in by_kind(s.objects, "HorizontalPodAutoscaler")}
        if got != want or not (set(WORKERS) & got):
            problems.append(f"KEDA off: HPAs for {sorted(got)}, expected {sorted(want)}")
    elif s.name == "external-tls-auth.yaml":
        data = named(s.objects, "ConfigMap", RELEASE)["data"]
        for k in ("STOCKFLOW_NATS_CREDS_FILE", "STOCKFLOW_NATS_TLS_CA_FILE", "STOCKFLOW_REDIS_TLS_CA_FILE", "STOCKFLOW_REDIS_USERNAME",
                  "STOCKFLOW_NATS_TLS_CERT_FILE", "STOCKFLOW_NATS_TLS_KEY_FILE", "STOCKFLOW_REDIS_TLS_CERT_FILE", "STOCKFLOW_REDIS_TLS_KEY_FILE"):
            if k not in data:
                problems.append(f"external: ConfigMap lacks {k}")
        if data.get("STOCKFLOW_REDIS_CLUSTER") != "true":
            problems.append(f"external: STOCKFLOW_REDIS_CLUSTER={data.get('STOCKFLOW_REDIS_CLUSTER')!r} for a Redis Cluster")
        problems += check_secret_files(s, {
            "nats-client.crt": (s.v["nats"]["tls"]["clientCert"]["existingSecret"], "tls.crt"),
            "nats-client.key": (s.v["nats"]["tls"]["clientCert"]["existingSecret"], "tls.key"),
            "redis-client.crt": (s.v["redis"]["tls"]["clientCert"]["existingSecret"], "client.pem"),
            "redis-client.key": (s.v["redis"]["tls"]["clientCert"]["existingSecret"], "client-key.pem"),
        })
        if not data["STOCKFLOW_REDIS_URL"].startswith("rediss://") or not data["STOCKFLOW_NATS_URL"].startswith("tls://"):
            problems.append("external: TLS URLs not passed through")
        if by_kind(s.objects, "Secret"):
            problems.append("external: everything comes from existing Secrets, yet a Secret is rendered")
        refs = set()
        for d in by_kind(s.objects, "Deployment"):
            for e in d["spec"]["template"]["spec"]["containers"][0].get("env", []):
                if "valueFrom" in e:
                    refs.add((component_of(d), e["name"], e["valueFrom"]["secretKeyRef"]["name"]))
        for comp in s.enabled:
            if (comp, "STOCKFLOW_REDIS_PASSWORD", s.v["redis"]["auth"]["existingSecret"]) not in refs:
                problems.append(f"external: {comp} does not read the Redis password from the existing Secret")
        if ("gateway", "STOCKFLOW_GATEWAY_TOKENS", s.v["gateway"]["auth"]["existingSecret"]) not in refs:
            problems.append("external: gateway tokens not read from the existing Secret")
        if ("notify-worker", "STOCKFLOW_WEBHOOK_SECRET", s.v["workers"]["notify"]["webhooks"]["existingSecret"]) not in refs:
            problems.append("external: webhook secret not read from the existing Secret")
        if any(r[1] == "STOCKFLOW_GATEWAY_TOKENS" and r[0] != "gateway" for r in refs):
            problems.append("external: gateway tokens reach a worker")
        if any(r[1] == "STOCKFLOW_WEBHOOK_SECRET" and r[0] != "notify-worker" for r in refs):
            problems.append("external: webhook secret reaches another component")
    elif s.name == "mtls-nkey.yaml":
        data = named(s.objects, "ConfigMap", RELEASE)["data"]
        want = {
            "STOCKFLOW_NATS_NKEY_FILE": "/etc/stockflow/secrets/nats.nkey",
            "STOCKFLOW_NATS_TLS_CERT_FILE": "/etc/stockflow/secrets/nats-client.crt",
            "STOCKFLOW_NATS_TLS_KEY_FILE": "/etc/stockflow/secrets/nats-client.key",
            "STOCKFLOW_REDIS_TLS_CERT_FILE": "/etc/stockflow/secrets/redis-client.crt",
            "STOCKFLOW_REDIS_TLS_KEY_FILE": "/etc/stockflow/secrets/redis-client.key",
            "STOCKFLOW_REDIS_CLUSTER": "false",
        }
        for k, val in want.items():
            if data.get(k) != val:
                problems.append(f"mtls-nkey: ConfigMap {k}={data.get(k)!r}, expected {val!r}")
        if any(k in data for k in ("STOCKFLOW_NATS_CREDS_FILE", "STOCKFLOW_NATS_TOKEN", "STOCKFLOW_NATS_USER")):
            problems.append("mtls-nkey: another NATS auth method configured next to the nkey")
        problems += check_secret_files(s, {f: ("", f) for f in ("nats.nkey", "nats-client.crt", "nats-client.key", "redis-client.crt", "redis-client.key")})
        problems += check_in_flight(s, {"notify-worker": str(s.v["workers"]["notify"]["maxInFlight"])})
    elif s.name == "inline-secrets.yaml":
        if not named(s.objects, "Secret", RELEASE):
            problems.append("inline secrets: no Secret rendered")
        problems += check_webhooks(s)
    elif s.name == "connector.yaml":
        problems += check_connector_secret_variables(s)
    elif s.name == "monitoring.yaml":
        if not kinds >= {"PodMonitor", "ServiceMonitor", "PrometheusRule"}:
            problems.append(f"monitoring: missing {sorted({'PodMonitor', 'ServiceMonitor', 'PrometheusRule'} - kinds)}")
    return problems


def check_secret_files(s: Scenario, want: dict[str, tuple[str, str]]) -> list[str]:
    """Every pod mounts each file (path in the secret dir -> (Secret, "" = the chart's; key))."""
    problems = []
    for _, obj in s.objects:
        if obj["kind"] not in ("Deployment", "Job", "Pod"):
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        own = RELEASE if obj["kind"] != "Job" else f"{RELEASE}-setup"
        mounted = {}
        for vol in pod_spec(obj).get("volumes", []):
            for src in (vol.get("projected") or {}).get("sources", []):
                for item in (src.get("secret") or {}).get("items", []):
                    mounted[item["path"]] = (src["secret"]["name"], item["key"])
        for path, (secret, key) in want.items():
            expected = (secret or own, key)
            if mounted.get(path) != expected:
                problems.append(f"{where}: {path} comes from {mounted.get(path)}, expected {expected}")
    return problems


def check_connector_secret_variables(s: Scenario) -> list[str]:
    """The connector may read for a shop exactly the variables its shops file names and
    connector.secretVariables lists (STOCKFLOW_CONNECTOR_SECRET_VARIABLES), each from existingSecret."""
    problems = []
    connector = s.v["connector"]
    want = []
    for shop in connector["shops"]:
        for field in ("webhook_secret_env", "access_token_env", "consumer_key_env", "consumer_secret_env"):
            if shop.get(field) and shop[field] not in want:
                want.append(shop[field])
    want += [v for v in connector.get("secretVariables") or [] if v not in want]
    for d in by_kind(s.objects, "Deployment"):
        if component_of(d) != "connector":
            continue
        env = pod_spec(d)["containers"][0].get("env", [])
        listed = [e.get("value") for e in env if e["name"] == "STOCKFLOW_CONNECTOR_SECRET_VARIABLES"]
        if listed != [",".join(want)]:
            problems.append(f"connector: STOCKFLOW_CONNECTOR_SECRET_VARIABLES {listed}, expected {[','.join(want)]}")
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
        for var in want:
            if refs.get(var) != {"name": connector["existingSecret"], "key": var}:
                problems.append(f"connector: {var} is not read from {connector['existingSecret']}: {refs.get(var)}")
    return problems


def check_in_flight(s: Scenario, want: dict[str, str]) -> list[str]:
    """STOCKFLOW_MAX_IN_FLIGHT set in a Deployment's own env: only for the components in `want`."""
    problems = []
    for d in by_kind(s.objects, "Deployment"):
        env = {e["name"]: e.get("value") for e in pod_spec(d)["containers"][0].get("env", [])}
        got = env.get("STOCKFLOW_MAX_IN_FLIGHT")
        if got != want.get(component_of(d)):
            problems.append(f"{component_of(d)}: STOCKFLOW_MAX_IN_FLIGHT={got!r} in its env, expected {want.get(component_of(d))!r}")
    return problems


def check_webhook_retries(s: Scenario, want: dict[str, str]) -> list[str]:
    """The webhook retry settings are in the notify worker's env, and in no other's."""
    problems = []
    for d in by_kind(s.objects, "Deployment"):
        env = {e["name"]: e.get("value") for e in pod_spec(d)["containers"][0].get("env", [])}
        got = {k: env.get(k) for k in want}
        expected = want if component_of(d) == "notify-worker" else {k: None for k in want}
        if got != expected:
            problems.append(f"{component_of(d)}: webhook retry settings {got}, expected {expected}")
    return problems


def check_checksum_rolls(helm, base_values: dict) -> list[str]:
    """Changing config or a secret value changes the pods' checksum; nothing else does."""

    def checksum(values):
        objs = render(helm, values)
        return next(d for d in by_kind(objs, "Deployment"))["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    problems = []
    base = checksum(base_values)
    if checksum({**base_values, "config": {"log": "debug"}}) == base:
        problems.append("changing config.log does not change checksum/config")
    if checksum({**base_values, "redis": {"auth": {"enabled": True, "password": "another-one"}}}) == base:
        problems.append("changing a secret value does not change checksum/config")
    if checksum({**base_values, "workers": {"stock": {"replicas": 3}}}) != base:
        problems.append("checksum/config changes with replicas, which is not configuration")
    return problems


REFUSED = [
    # (why, values, where it must be refused: "schema" or "render")
    ("a misspelt top-level key", {"gatway": {"replicas": 2}}, "schema"),
    ("a misspelt nested key", {"workers": {"stock": {"replica": 2}}}, "schema"),
    ("negative replicas", {"workers": {"order": {"replicas": -1}}}, "schema"),
    ("an http:// NATS URL", {"nats": {"url": "http://nats:4222"}}, "schema"),
    ("an unknown NATS auth method", {"nats": {"auth": {"method": "jwt"}}}, "schema"),
    ("a listen address in config.extra", {"config": {"extra": {"STOCKFLOW_METRICS_ADDR": "0.0.0.0:1"}}}, "schema"),
    ("a fractional image tag", {"image": {"tag": 1.5}}, "schema"),
    ("a worker without consumers", {"workers": {"notify": {"consumers": []}}}, "schema"),
    ("a monitoring endpoint with a scheme", {"keda": {"natsMonitoringEndpoint": "http://nats:8222"}}, "schema"),
    ("a gateway token without its scope", {"gateway": {"auth": {"tokens": ["sentinel-gateway-token-one-5d1e"]}}}, "schema"),
    ("a gateway token shorter than 16 characters", {"gateway": {"auth": {"tokens": ["read:short-token"]}}}, "schema"),
    ("Redis TLS with a redis:// URL", {"redis": {"tls": {"enabled": True}}}, "render"),
    ("NATS password auth without a user", {"nats": {"auth": {"method": "userPassword", "password": "x"}}}, "render"),
    ("NATS token auth without a token", {"nats": {"auth": {"method": "token"}}}, "render"),
    ("a shutdown timeout at the grace period", {"config": {"shutdownTimeoutSeconds": 30}}, "render"),
    ("minReplicas above maxReplicas", {"workers": {"stock": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}}, "render"),
    ("an HPA at zero replicas", {"keda": {"enabled": False}, "workers": {"stock": {"autoscaling": {"minReplicas": 0}}}}, "render"),
    ("a gateway token without a scope", {"gateway": {"auth": {"tokens": ["a-long-enough-token-123"]}}}, "schema"),
    ("a gateway token with an unknown scope", {"gateway": {"auth": {"tokens": ["root:a-long-enough-token-123"]}}}, "schema"),
    ("a gateway token shorter than 16 characters", {"gateway": {"auth": {"tokens": ["read:short-token"]}}}, "schema"),
    ("an unknown gateway auth method", {"gateway": {"auth": {"method": "basic"}}}, "schema"),
    ("gateway auth none with tokens", {"gateway": {"auth": {"method": "none", **FIXED_TOKENS["gateway"]["auth"]}}}, "render"),
    ("gateway auth none with an existing Secret", {"gateway": {"auth": {"method": "none", "existingSecret": "gw"}}}, "render"),
    ("STOCKFLOW_GATEWAY_AUTH in gateway.env", {"gateway": {"env": [{"name": "STOCKFLOW_GATEWAY_AUTH", "value": "none"}]}}, "render"),
    ("STOCKFLOW_GATEWAY_AUTH in config.extra", {"config": {"extra": {"STOCKFLOW_GATEWAY_AUTH": "none"}}}, "render"),
    ("STOCKFLOW_GATEWAY_TOKENS in gateway.env", {"gateway": {"env": [{"name": "STOCKFLOW_GATEWAY_TOKENS", "value": ""}]}}, "render"),
    ("STOCKFLOW_GATEWAY_TOKENS_FILE in gateway.env", {"gateway": {"env": [{"name": "STOCKFLOW_GATEWAY_TOKENS_FILE", "value": "/t"}]}}, "render"),
    ("STOCKFLOW_GATEWAY_TOKENS in config.extra", {"config": {"extra": {"STOCKFLOW_GATEWAY_TOKENS": ""}}}, "render"),
    ("a malformed nkey seed", {"nats": {"auth": {"method": "nkey", "nkeySeed": "not-a-seed"}}}, "schema"),
    ("a notify in-flight window of zero", {"workers": {"notify": {"maxInFlight": 0}}}, "schema"),
    ("a webhook channel filter that is not a channel id",
     {"workers": {"notify": {"webhooks": {"subscriptions": [
         {"id": "m", "url": "https://m.example/h", "events": ["channel_availability"], "channels": ["market place"]}]}}}},
     "schema"),
    ("NATS nkey auth without a seed", {"nats": {"auth": {"method": "nkey"}}}, "render"),
    ("zero stock partitions", {"nats": {"stockPartitions": 0}}, "schema"),
    ("129 stock partitions", {"nats": {"stockPartitions": 129}}, "schema"),
    ("several Redis URLs without cluster mode", {"redis": {"url": "redis://a:6379,redis://b:6379"}}, "render"),
    ("a client certificate without its key", {"nats": {"url": "tls://nats:4222", "tls": {"enabled": True, "clientCert": {"cert": "PEM"}}}}, "render"),
    ("a client certificate without TLS", {"redis": {"tls": {"clientCert": {"existingSecret": "redis-client"}}}}, "render"),
    ("Redis TLS with one redis:// seed", {"redis": {"cluster": True, "url": "rediss://a:6379,redis://b:6379", "tls": {"enabled": True}}}, "render"),
    ("a connector secret variable that is one of stockflow's settings",
     {"connector": {"secretVariables": ["STOCKFLOW_NATS_PASSWORD"]}}, "schema"),
]


def check_refused(helm) -> list[str]:
    problems = []
    for why, values, stage in REFUSED:
        with helm.Chart.load(str(CHART)) as chart:
            try:
                chart.validate_schema(values)
            except helm.HelmError as e:
                if stage != "schema":
                    problems.append(f"{why}: refused by the schema, expected a template failure ({e})")
                continue
            if stage == "schema":
                problems.append(f"{why}: accepted by values.schema.json")
                continue
            try:
                chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
                problems.append(f"{why}: rendered without error")
            except helm.HelmError:
                pass
    return problems


# --------------------------------------------------------------------------------------------
# Alerts and dashboard
# --------------------------------------------------------------------------------------------

def check_metric_names(contract: Contract) -> list[str]:
    problems = []
    known = contract.series_names() | {"up"}
    for rule in alert_rules():
        for name in sorted(metric_names(rule["expr"]) - known):
            problems.append(f"alert {rule['alert']} uses {name}, not in docs/operations.md")
    for title, expr in dashboard_queries():
        for name in sorted(metric_names(grafana_to_promql(expr)) - known):
            problems.append(f"dashboard panel {title!r} uses {name}, not in docs/operations.md")
    return problems


def check_dashboard() -> list[str]:
    problems = []
    dash = json.loads((CHART / "files" / "dashboard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        problems.append("panel ids are not unique")
    text = json.dumps([e for _, e in dashboard_queries()])
    # What the issue asks the dashboard to show, by the series that carry it.
    for what, needle in [
        ("throughput", "rate(stockflow_events_total"),
        ("latency p50", "histogram_quantile(0.5, sum by (worker, le) (rate(stockflow_event_latency_seconds_bucket"),
        ("latency p95", "histogram_quantile(0.95, sum by (worker, le) (rate(stockflow_event_latency_seconds_bucket"),
        ("latency p99", "histogram_quantile(0.99, sum by (worker, le) (rate(stockflow_event_latency_seconds_bucket"),
        ("lag per consumer", "stockflow_consumer_pending_messages"),
        ("duplicates absorbed", 'outcome=\\"duplicate\\"'),
        ("dead letters", "stockflow_dead_letters_total"),
        ("alerts raised", "stockflow_alerts_total"),
        ("reservations", "stockflow_reservations_total"),
        ("expiries", "stockflow_holds_expired_total"),
        ("channel quantities published", 'kind=\\"channel_availability\\"'),
        ("oversold sales per channel", "sum by (channel) (increase(stockflow_channel_oversold_total"),
    ]:
        if needle not in text:
            problems.append(f"dashboard shows no {what} ({needle})")
    for title, expr in dashboard_queries():
        if "$namespace" not in expr:
            problems.append(f"panel {title!r} ignores the namespace variable")
    for p in dash["panels"]:
        if p["type"] != "row" and p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"panel {p.get('title')!r} does not use the datasource variable")
    return problems


def check_promtool_rules(promtool: str) -> list[str]:
    r = subprocess.run([promtool, "check", "rules", str(CHART / "files" / "alerts.yaml")], capture_output=True, text=True)
    return [] if r.returncode == 0 else (r.stdout + r.stderr).strip().splitlines()


def check_promtool_tests(promtool: str) -> list[str]:
    r = subprocess.run([promtool, "test", "rules", str(TESTS / "alerts_test.yaml")], capture_output=True, text=True, cwd=TESTS)
    return [] if r.returncode == 0 else (r.stdout + r.stderr).strip().splitlines()


def check_alert_coverage() -> list[str]:
    """Every alert has a test where it fires and one where it stays silent."""
    import yaml

    tests = yaml.safe_load((TESTS / "alerts_test.yaml").read_text())
    fires, silent = set(), set()
    for t in tests["tests"]:
        for a in t.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else silent).add(a["alertname"])
    problems = []
    names = [r["alert"] for r in alert_rules() if "alert" in r]
    if len(names) != len(set(names)):
        problems.append("duplicate alert names")
    for name in names:
        if name not in fires:
            problems.append(f"{name} has no test where it fires")
        if name not in silent:
            problems.append(f"{name} has no test where it stays silent")
    for name in (fires | silent) - set(names):
        problems.append(f"tests mention {name}, which files/alerts.yaml does not define")
    required = ["LagHigh", "Stalled", "DeadLetters", "ProcessingErrors", "WorkerDown", "Webhook", "RedisLatency",
                "ChannelOversold"]
    for part in required:
        if not any(part in n for n in names):
            problems.append(f"no alert for {part}")
    return problems


def check_dashboard_promql(promtool: str) -> list[str]:
    """promtool parses every dashboard query, written out as recording rules."""
    import yaml

    rules = [{"record": f"stockflow:dashboard_query_{i}", "expr": grafana_to_promql(expr)}
             for i, (_, expr) in enumerate(dashboard_queries())]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        path = f.name
    try:
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    return [] if r.returncode == 0 else (r.stdout + r.stderr).strip().splitlines()


# --------------------------------------------------------------------------------------------
# Companion values, Dockerfile
# --------------------------------------------------------------------------------------------


def check_companions(defaults: dict) -> list[str]:
    import yaml

    problems = []
    nats = yaml.safe_load((COMPANIONS / "nats-values.yaml").read_text())
    js = nats.get("config", {}).get("jetstream", {})
    if not js.get("enabled") or not js.get("fileStore", {}).get("enabled"):
        problems.append("nats-values.yaml: JetStream with file storage is not enabled")
    cluster = nats.get("config", {}).get("cluster", {})
    if not cluster.get("enabled") or cluster.get("replicas") != 3:
        problems.append("nats-values.yaml: not a 3-node cluster")
    if not nats.get("config", {}).get("monitor", {}).get("enabled", True):
        problems.append("nats-values.yaml: the monitoring port KEDA reads is disabled")
    # The mapping a partitioned stock input needs is documented where the servers are configured.
    nats_text = (COMPANIONS / "nats-values.yaml").read_text()
    if "STOCKFLOW_STOCK_PARTITIONS" not in nats_text or any(
            f'"stock.{kind}.*": "stock.{kind}.{{{{partition(' not in nats_text for kind in ("events", "changes", "outcomes")):
        problems.append("nats-values.yaml: not every subject mapping of a partitioned stock input and ledger")
    valkey_files = sorted(COMPANIONS.glob("valkey-values.yaml")) + sorted(COMPANIONS.glob("redis-values.yaml"))
    if not valkey_files:
        problems.append("no helm/companions/valkey-values.yaml or redis-values.yaml")
    for f in valkey_files:
        yaml.safe_load(f.read_text())
    readme = (CHART / "README.md").read_text()
    # The chart's defaults point at the releases the README installs.
    for release, url in (("nats", defaults["nats"]["url"]), ("valkey", defaults["redis"]["url"])):
        host = re.sub(r"^\w+://", "", url).split(":")[0]
        if not re.search(rf"helm (upgrade --install|install) {host} ", readme):
            problems.append(f"default URL {url} names {host}, but the README installs no release called {host}")
    return problems


def check_dockerfile(defaults: dict) -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    problems = []
    for needle in ("FROM rust:1-bookworm", "cargo build --release --locked --bins", "FROM debian:bookworm-slim",
                   "ca-certificates", "/usr/local/bin"):
        if needle not in text:
            problems.append(f"Dockerfile lacks {needle!r}")
    uid = defaults["podSecurityContext"]["runAsUser"]
    if not re.search(rf"^USER {uid}(:{uid})?\s*$", text, re.M):
        problems.append(f"Dockerfile's USER is not {uid}, the chart's runAsUser")
    return problems


# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-k", dest="only", default="", help="run only the values files whose name contains this")
    args = parser.parse_args()
    started = time.monotonic()

    ensure_python_deps()
    import helm_python as helm  # noqa: E402  (installed above)

    promtool = ensure_promtool()
    results = Results(args.verbose)
    contract = Contract(OPERATIONS.read_text())
    print(f"helm SDK {helm.helm_sdk_version()}, promtool at {promtool}, chart {CHART.relative_to(ROOT)}")
    if not CRDS.is_dir():
        print(f"NOTE  {CRDS} is absent: KEDA and Prometheus Operator objects are not validated against their CRDs")

    guarded(results, "contract: docs/operations.md tables parse", check_contract_parsed, contract)
    defaults = merged_values(helm, {})

    values_files = sorted(p for p in VALUES_DIR.glob("*.yaml") if args.only in p.name)
    if not values_files:
        results.check("values files", [f"no values files in {VALUES_DIR}"])
    for path in values_files:
        name = path.name
        values = load_values(path)
        guarded(results, f"[{name}] helm lint --strict", check_lint, helm, values)
        try:
            objects = render(helm, values)
            upgrade = render(helm, values, is_upgrade=True)
        except Exception as exc:  # noqa: BLE001
            results.check(f"[{name}] render", [f"{type(exc).__name__}: {exc}"])
            continue
        same = without_generated_tokens(objects) == without_generated_tokens(upgrade)
        results.check(f"[{name}] render ({len(objects)} objects)", [] if same else ["install and upgrade renders differ"])
        s = Scenario(name, values, objects, merged_values(helm, values), contract)
        guarded(results, f"[{name}] kubernetes-validate --strict (k8s {', '.join(KUBE_VERSIONS)})", validate_core, objects)
        if CRDS.is_dir():
            guarded(results, f"[{name}] CRD schemas, strict (KEDA, Prometheus Operator)", validate_custom, objects)
        else:
            results.skip(f"[{name}] CRD schemas", f"{CRDS} not found")
        guarded(results, f"[{name}] Deployments: probes, securityContext, checksum, PDB", check_deployments, s)
        guarded(results, f"[{name}] ConfigMap matches the contract", check_config, s)
        guarded(results, f"[{name}] setup hook Job and helm test Pod", check_hooks, s)
        guarded(results, f"[{name}] secrets stay in Secrets", check_secrets, s)
        guarded(results, f"[{name}] gateway tokens ({s.gateway_tokens_source()})", check_gateway_tokens, s)
        guarded(results, f"[{name}] scaling (KEDA / HPA)", check_scaling, s)
        guarded(results, f"[{name}] gateway Service and Ingress", check_network, s)
        guarded(results, f"[{name}] monitoring objects", check_monitoring, s)
        guarded(results, f"[{name}] scenario expectations", expectations, s)

    if not args.only:
        guarded(results, "checksum/config rolls pods on config and secret changes only", check_checksum_rolls, helm, FIXED_TOKENS)
        guarded(results, "the token validator agrees with workers/gateway/src/auth.rs", check_token_parser)
        guarded(results, "gateway tokens: generated anew by each render", check_tokens_random, helm)
        guarded(results, "gateway tokens: an installed Secret's are kept, one set per render", check_tokens_kept, helm)
        guarded(results, "gateway tokens: a render that would leave the gateway without tokens fails naming the value", check_no_tokens_fails_naming_the_value, helm)
        guarded(results, "gateway tokens: every source, its env, Secrets and release notes", check_tokens_everywhere, helm, contract)
        guarded(results, f"invalid values are refused ({len(REFUSED)} cases)", check_refused, helm)
        guarded(results, "promtool check rules files/alerts.yaml", check_promtool_rules, promtool)
        guarded(results, "promtool test rules helm/tests/alerts_test.yaml", check_promtool_tests, promtool)
        guarded(results, "every alert has a firing and a silent test", check_alert_coverage)
        guarded(results, "alerts and dashboard use only metrics from docs/operations.md", check_metric_names, contract)
        guarded(results, "dashboard content", check_dashboard)
        guarded(results, "promtool parses every dashboard query", check_dashboard_promql, promtool)
        guarded(results, "stock partitions: ConfigMap, KEDA triggers per input and ledger partition, release notes", check_stock_partitions, helm)
        guarded(results, "companion values files and README", check_companions, defaults)
        guarded(results, "Dockerfile", check_dockerfile, defaults)

    for var, meaning in PROPOSED_ENV.items():
        results.note(f"{var} ({meaning}) is set by the chart but not yet in docs/operations.md")
    print()
    for n in results.notes:
        print(f"NOTE  {n}")
    if results.failed:
        print("\nFailed:")
        for name, _ in results.failed:
            print(f"  - {name}")
    print(f"\nchart checks took {time.monotonic() - started:.1f}s")
    skipped = f", {len(results.skipped)} skipped" if results.skipped else ""
    print(f"{len(results.passed)} passed, {len(results.failed)} failed{skipped}")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
