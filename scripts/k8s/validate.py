#!/usr/bin/env python3
"""Offline validation of the Helm chart (config/helm/dragonfly-rs) and of the plain manifests
rendered from it (config/kubernetes). Run by scripts/test.sh; needs what
scripts/install-deps.sh installs (helm-python-sdk: Helm's Go SDK as a library, no helm binary;
kubernetes-validate: the Kubernetes JSON schemas, bundled) and no network.

For the default values and every values file in the chart's ci/ directory it
  - renders the chart (Helm v4 SDK) and lints it (`helm lint --strict`);
  - validates every object against the Kubernetes schemas, strictly (no unknown fields), for
    each version in KUBE_VERSIONS; the one CRD kind (ServiceMonitor) has no bundled schema,
    so its shape is asserted instead;
  - asserts what the design needs: the node DaemonSet's privileges, host namespaces, FUSE
    device and mount propagation, its ordering (the daemon is up before containerd is
    pointed at it), the schedulers' headless Service, the volumes, the join tokens (three
    keys; each member mounts only its own and names it, and the manager it dials, in its
    config; the manager's certificate names what members dial), and that every config in a
    ConfigMap parses and uses only keys the example configs (config/*.yaml) have, and (when
    scripts/test.sh has built them: DRAGONFLY_MANAGER_BIN, DRAGONFLY_SNAPSHOTTER_BIN) that the
    binaries themselves load the manager's, seed peers' and nodes' configs;
  - checks that values the chart refuses are refused.
Then it checks that config/kubernetes holds exactly a fresh render of the defaults (less the
generated Secrets, which must not be committed), that its kustomization.yaml lists every file,
and, where kubectl is installed, that `kubectl kustomize` builds the same objects.

  scripts/k8s/validate.py           # validate (exit 1 on any failure)
  scripts/k8s/validate.py --write   # regenerate config/kubernetes from the chart, then validate
"""

from __future__ import annotations

import argparse
import base64
import copy
import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

try:
    import helm_python as helm
    import kubernetes_validate
    import kubernetes_validate.utils as kv_utils
except ImportError as e:  # pragma: no cover - a missing install step
    sys.exit(f"validate.py: {e}; run scripts/install-deps.sh (it installs helm-python-sdk and kubernetes-validate)")

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "config/helm/dragonfly-rs"
PLAIN = REPO / "config/kubernetes"
EXAMPLES = REPO / "config"
RELEASE = "dragonfly-rs"
NAMESPACE = "dragonfly-system"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a recent one.
KUBE_VERSIONS = ["1.29.0", "1.34.0"]
# Kinds from CRDs: no bundled schema; their shape is asserted below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# Config keys the chart writes that the Rust side adds in parallel (issue 12): accepted with
# a warning until the example config shows them.
ASSUMED_KEYS = {"manager": [("ca", "tokens_dir")]}
# Values the chart must refuse, and a part of the message it refuses them with.
REFUSED = [
    ({"client": {"mode": "pod"}}, "client.mode=pod with client.setup.defaultSnapshotter=true"),
    ({"client": {"mode": "daemon"}}, "client.mode must be systemd, pod or undo"),
]
PLAIN_HEADER = (
    "# Generated from config/helm/dragonfly-rs with its default values (release {r}, namespace\n"
    "# {ns}) by scripts/k8s/validate.py --write; do not edit. docs/kubernetes.md: usage.\n"
)
GENERATED_SECRETS = {f"{RELEASE}-join", f"{RELEASE}-manager"}


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.warnings: list[str] = []

    def check(self, cond: bool, where: str, msg: str) -> bool:
        if not cond:
            self.items.append(f"{where}: {msg}")
        return cond

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)


F = Failures()


# ---------------------------------------------------------------------------------------
# Rendering


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class Render:
    """One render of the chart: its objects, with the template each came from."""

    def __init__(self, name: str, overrides: dict, chart: "helm.Chart") -> None:
        self.name = name
        self.overrides = overrides
        self.values = deep_merge(chart.values, overrides)
        self.manifests = chart.render(overrides, name=RELEASE, namespace=NAMESPACE)
        self.objects: list[tuple[str, dict]] = []
        for path, text in sorted(self.manifests.items()):
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append((path, doc))

    def get(self, kind: str, name: str) -> dict | None:
        for _, o in self.objects:
            if o["kind"] == kind and o["metadata"]["name"] == name:
                return o
        return None

    def of_kind(self, kind: str) -> list[dict]:
        return [o for _, o in self.objects if o["kind"] == kind]


# ---------------------------------------------------------------------------------------
# Allowed config keys: the example configs' key trees, and security.join's fields from the
# Rust struct (the example shows `join: null`).


def key_tree(value):
    if isinstance(value, dict) and value:
        return {k: key_tree(v) for k, v in value.items()}
    return None  # a leaf: any value (scalars, lists, free-form maps such as registry.mirrors)


def join_fields() -> dict:
    src = (REPO / "crates/membership/src/join.rs").read_text()
    m = re.search(r"pub struct JoinSpec \{(.*?)\n\}", src, re.S)
    fields = re.findall(r"^\s*pub (\w+):", m.group(1), re.M) if m else []
    if not fields:
        F.check(False, "crates/membership/src/join.rs", "cannot find JoinSpec's fields")
    return {f: None for f in fields}


@functools.lru_cache(None)
def allowed_keys() -> dict:
    trees = {}
    for comp, file in [("manager", "manager.yaml"), ("scheduler", "scheduler.yaml"), ("snapshotter", "snapshotter.yaml")]:
        tree = key_tree(yaml.safe_load((EXAMPLES / file).read_text()))
        if "security" in tree and isinstance(tree["security"], dict):
            tree["security"]["join"] = join_fields()
        for path in ASSUMED_KEYS.get(comp, []):
            node = tree
            for k in path[:-1]:
                node = node[k]
            if path[-1] not in node:
                F.warn(f"config/{file} has no {'.'.join(path)}: assumed (the chart writes it; being added on the Rust side)")
                node[path[-1]] = None
        trees[comp] = tree
    return trees


def check_keys(where: str, cfg, tree, path: str = "") -> None:
    if not F.check(isinstance(cfg, dict), where, f"{path or 'the config'} is not a mapping"):
        return
    for k, v in cfg.items():
        p = f"{path}.{k}" if path else k
        if not F.check(k in tree, where, f"unknown config key {p} (not in the example config)"):
            continue
        sub = tree[k]
        if isinstance(sub, dict):
            # A section (a struct on the Rust side): null is no value for it.
            check_keys(where, v, sub, p)


# ---------------------------------------------------------------------------------------
# Schemas


@functools.lru_cache(None)
def _schema_contents(filename, version):
    return _orig_schema_contents(filename, version)


_orig_schema_contents = kv_utils.schema_contents
kv_utils.schema_contents = _schema_contents  # the bundled schemas, each file parsed once


def assert_service_monitor(where: str, o: dict, r: Render) -> None:
    spec = o.get("spec", {})
    labels = spec.get("selector", {}).get("matchLabels", {})
    services = [s for s in r.of_kind("Service") if labels and all(s["metadata"].get("labels", {}).get(k) == v for k, v in labels.items())]
    F.check(len(services) == 1, where, f"selects {len(services)} Services by {labels} (want 1)")
    F.check(spec.get("namespaceSelector", {}).get("matchNames") == [NAMESPACE], where, "namespaceSelector must name the release namespace")
    eps = spec.get("endpoints") or []
    F.check(bool(eps), where, "has no endpoints")
    for ep in eps:
        F.check(set(ep) <= {"port", "path", "interval", "scheme", "scrapeTimeout"}, where, f"unexpected endpoint fields {sorted(ep)}")
        F.check(ep.get("path") == "/metrics", where, "endpoint path must be /metrics")
        if services:
            ports = [p["name"] for p in services[0]["spec"]["ports"]]
            F.check(ep.get("port") in ports, where, f"endpoint port {ep.get('port')} is not a port of {services[0]['metadata']['name']} ({ports})")
    extra = r.values["metrics"]["serviceMonitor"]["additionalLabels"]
    F.check(all(o["metadata"]["labels"].get(k) == v for k, v in extra.items()), where, "lacks metrics.serviceMonitor.additionalLabels")


def validate_schemas(r: Render, counts: dict) -> None:
    for path, o in r.objects:
        where = f"[{r.name}] {path} {o.get('kind')}/{o.get('metadata', {}).get('name')}"
        if (o.get("apiVersion"), o.get("kind")) in CRD_KINDS:
            assert_service_monitor(where, o, r)
            counts["crd"] += 1
            continue
        for v in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(o, v, strict=True)
                counts[v] += 1
            except kubernetes_validate.ValidationError as e:
                F.check(False, where, f"Kubernetes {v} schema: {'.'.join(map(str, e.path))}: {e.message}")
            except kv_utils.SchemaNotFoundError as e:
                F.check(False, where, e.message)


# ---------------------------------------------------------------------------------------
# Invariants


def pod_spec(o: dict) -> dict:
    return o["spec"]["template"]["spec"]


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def volume(spec: dict, name: str) -> dict | None:
    return next((v for v in spec.get("volumes") or [] if v["name"] == name), None)


def mount(c: dict, path: str) -> dict | None:
    return next((m for m in c.get("volumeMounts") or [] if m["mountPath"] == path), None)


def config_of(r: Render, cm_name: str, key: str, where: str):
    cm = r.get("ConfigMap", cm_name)
    if not F.check(cm is not None, where, f"no ConfigMap {cm_name}"):
        return None, None
    text = cm.get("data", {}).get(key)
    if not F.check(text is not None, where, f"ConfigMap {cm_name} has no {key}"):
        return None, None
    try:
        return yaml.safe_load(text), text
    except yaml.YAMLError as e:
        F.check(False, where, f"{cm_name}/{key} is not YAML: {e}")
        return None, None


def sh_syntax(where: str, script: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write(script)
        f.flush()
        p = subprocess.run(["sh", "-n", f.name], capture_output=True, text=True)
    F.check(p.returncode == 0, where, f"shell syntax: {p.stderr.strip()}")


def scheduler_names(r: Render) -> list[str]:
    sts = f"{RELEASE}-scheduler"
    return [f"{sts}-{i}.{sts}.{NAMESPACE}.svc:8002" for i in range(int(r.values["scheduler"]["replicas"]))]


def join_secret_name(r: Render) -> str:
    return r.values["security"]["existingSecret"] or f"{RELEASE}-join"


def check_join_mount(where: str, spec: dict, c: dict, role: str, r: Render) -> None:
    """The container sees only its role's token, at /etc/dragonfly/join/<role>."""
    m = mount(c, "/etc/dragonfly/join")
    if not F.check(m is not None, where, f"container {c['name']} does not mount the join token at /etc/dragonfly/join"):
        return
    v = volume(spec, m["name"]) or {}
    sec = v.get("secret") or {}
    F.check(sec.get("secretName") == join_secret_name(r), where, f"join volume is not the Secret {join_secret_name(r)}")
    F.check([i.get("key") for i in sec.get("items") or []] == [role], where, f"join volume must hold only the {role} token")
    F.check(all(i.get("path") == role for i in sec.get("items") or []), where, f"the token must be the file /etc/dragonfly/join/{role}")


def check_member_security(where: str, cfg: dict, role: str, manager: str, state_dir: str, r: Render) -> None:
    sec = cfg.get("security")
    if not r.values["security"]["enabled"]:
        F.check(sec is None, where, "security.enabled=false, yet the config has a security section")
        return
    if not F.check(isinstance(sec, dict) and isinstance(sec.get("join"), dict), where, "no security.join"):
        return
    join = sec["join"]
    F.check(join.get("token_file") == f"/etc/dragonfly/join/{role}", where, f"security.join.token_file must be /etc/dragonfly/join/{role}")
    F.check(join.get("manager") == manager, where, f"security.join.manager is {join.get('manager')!r}, want {manager!r}")
    F.check("token" not in join and "ca_fingerprint" not in join, where, "joins by token file only (no inline token, no fingerprint)")
    F.check(sec.get("dir") == f"{state_dir}/credentials", where, f"security.dir must be {state_dir}/credentials")


def invariants(r: Render) -> None:
    v = r.values
    secure = v["security"]["enabled"]
    keys = allowed_keys()
    mgr = f"{RELEASE}-manager"
    mgr_dns = f"{mgr}.{NAMESPACE}.svc:65003"
    placeholder = "@MANAGER_SERVICE_IP@"
    ip_env = mgr.upper().replace("-", "_") + "_SERVICE_HOST"  # as Kubernetes names it
    w = f"[{r.name}]"

    for _, o in r.objects:
        md = o["metadata"]
        F.check(md.get("namespace") == NAMESPACE, w, f"{o['kind']}/{md['name']} is not in the release namespace")
        F.check(len(md["name"]) <= 63, w, f"{o['kind']}/{md['name']}: name longer than 63")
        F.check(md.get("labels", {}).get("app.kubernetes.io/instance") == RELEASE, w, f"{o['kind']}/{md['name']} lacks the instance label")

    # Every Service selects pods of some workload; its targetPorts are their ports' names.
    workloads = r.of_kind("Deployment") + r.of_kind("StatefulSet") + r.of_kind("DaemonSet")
    for s in r.of_kind("Service"):
        sel = s["spec"]["selector"]
        pods = [wl for wl in workloads if all(wl["spec"]["template"]["metadata"]["labels"].get(k) == val for k, val in sel.items())]
        if F.check(len(pods) == 1, w, f"Service {s['metadata']['name']} selects {len(pods)} workloads"):
            names = {p["name"] for c in pod_spec(pods[0])["containers"] for p in c.get("ports") or []}
            for p in s["spec"]["ports"]:
                F.check(p["targetPort"] in names, w, f"Service {s['metadata']['name']} port {p['name']}: no container port {p['targetPort']}")
    # Every ConfigMap, Secret and claim a pod uses is rendered, or named by the values.
    external = {v["security"]["existingSecret"], v["manager"]["database"]["existingSecret"], v["manager"]["auth"]["existingSecret"]} - {""}
    for wl in workloads:
        spec = pod_spec(wl)
        for vol in spec.get("volumes") or []:
            if "configMap" in vol:
                F.check(r.get("ConfigMap", vol["configMap"]["name"]) is not None, w, f"{wl['metadata']['name']}: no ConfigMap {vol['configMap']['name']}")
            if "secret" in vol:
                n = vol["secret"]["secretName"]
                F.check(r.get("Secret", n) is not None or n in external, w, f"{wl['metadata']['name']}: no Secret {n}")
            if "persistentVolumeClaim" in vol:
                F.check(r.get("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"]) is not None, w, f"{wl['metadata']['name']}: no claim")
        for c in containers(spec):
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    sec = r.get("Secret", ref["name"])
                    F.check(ref["name"] in external or (sec is not None and ref["key"] in sec.get("data", {})), w, f"{c['name']}: env {e['name']} names a missing Secret key {ref['name']}/{ref['key']}")
            for m in c.get("volumeMounts") or []:
                F.check(volume(spec, m["name"]) is not None or any(t["metadata"]["name"] == m["name"] for t in wl["spec"].get("volumeClaimTemplates") or []), w, f"{c['name']}: mount of unknown volume {m['name']}")

    # The join tokens.
    js = r.get("Secret", f"{RELEASE}-join")
    if secure and not v["security"]["existingSecret"]:
        if F.check(js is not None, w, "no join Secret"):
            F.check(sorted(js.get("data", {})) == ["peer", "scheduler", "seed"], w, f"join Secret keys {sorted(js.get('data', {}))}, want peer, scheduler, seed")
            for role, b64 in js.get("data", {}).items():
                tok = base64.b64decode(b64).decode()
                F.check(re.fullmatch(rf"dfjoin_{role}_[A-Za-z0-9]{{43}}", tok) is not None, w, f"join token for {role} is not dfjoin_{role}_<43 random characters>")
    else:
        F.check(js is None, w, "a join Secret is rendered without security or with security.existingSecret")

    # Manager.
    dep = r.get("Deployment", mgr)
    svc = r.get("Service", mgr)
    if F.check(dep is not None and svc is not None, w, "no manager Deployment and Service"):
        ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
        F.check(ports == {"http": 8080, "grpc": 65003}, w, f"manager Service ports {ports}, want http 8080, grpc 65003")
        spec = pod_spec(dep)
        c = spec["containers"][0]
        script = c["args"][0]
        sh_syntax(f"{w} manager start", script)
        F.check("exec dragonfly-manager --config /etc/dragonfly/manager.yaml" in script, w, "the manager must run with --config /etc/dragonfly/manager.yaml")
        F.check(f"/etc/dragonfly/config/manager.yaml > /etc/dragonfly/manager.yaml" in script, w, "the manager's config must be rendered from the ConfigMap")
        env = {e["name"]: e for e in c.get("env") or []}
        F.check("DRAGONFLY_ROOT_PASSWORD" in env, w, "the manager has no DRAGONFLY_ROOT_PASSWORD")
        db = v["manager"]["database"]
        F.check(("DRAGONFLY_DATABASE_URL" in env) == bool(db["url"] or db["existingSecret"]), w, "DRAGONFLY_DATABASE_URL must be set exactly when PostgreSQL is configured")
        data = volume(spec, (mount(c, "/var/lib/dragonfly/manager") or {}).get("name", ""))
        if F.check(data is not None, w, "the manager's data_dir is not a volume"):
            F.check(("persistentVolumeClaim" in data) == v["manager"]["persistence"]["enabled"], w, "the manager's data_dir must be the claim exactly when persistence is enabled")
        cfg, _ = config_of(r, mgr, "manager.yaml", w)
        if cfg is not None:
            check_keys(f"{w} manager.yaml", cfg, keys["manager"])
            F.check(cfg.get("data_dir") == "/var/lib/dragonfly/manager", w, "manager data_dir")
            F.check(cfg.get("database", {}).get("url", "") == "", w, "the database URL must come from the Secret, not the ConfigMap")
            ca = cfg.get("ca")
            if secure:
                if F.check(isinstance(ca, dict), w, "security on but the manager has no ca section"):
                    F.check(ca.get("dir") == "/var/lib/dragonfly/manager/ca", w, "ca.dir must be /var/lib/dragonfly/manager/ca")
                    F.check(ca.get("tokens_dir") == "/etc/dragonfly/join", w, "ca.tokens_dir must be /etc/dragonfly/join")
                    F.check(mgr_dns.rsplit(":", 1)[0] in (ca.get("names") or []), w, f"ca.names must name {mgr_dns.rsplit(':', 1)[0]} (what members in pods dial)")
                    F.check(ca.get("ips") == [placeholder], w, "ca.ips must carry the Service IP placeholder (what the nodes' hosts dial)")
                    F.check(f'ip="${{{ip_env}:?' in script, w, f"the manager start script must substitute ${ip_env}")
                    F.check(dep["spec"]["template"]["spec"].get("enableServiceLinks") is True, w, "the manager pod needs service links")
                m = mount(c, "/etc/dragonfly/join")
                if F.check(m is not None, w, "the manager does not mount the join tokens at /etc/dragonfly/join"):
                    sec = (volume(spec, m["name"]) or {}).get("secret") or {}
                    F.check(sec.get("secretName") == join_secret_name(r) and not sec.get("items"), w, "the manager must mount every key of the join Secret")
            else:
                F.check(ca is None and mount(c, "/etc/dragonfly/join") is None, w, "security off: no CA, no join tokens on the manager")
                F.check(placeholder not in yaml.safe_dump(cfg), w, "security off: no Service IP placeholder")

    # Schedulers.
    sts_name = f"{RELEASE}-scheduler"
    sts = r.get("StatefulSet", sts_name)
    hs = r.get("Service", sts_name)
    if F.check(sts is not None and hs is not None, w, "no scheduler StatefulSet and Service"):
        F.check(sts["spec"]["replicas"] == v["scheduler"]["replicas"], w, "scheduler replicas")
        F.check(sts["spec"]["serviceName"] == sts_name, w, "the scheduler StatefulSet's serviceName must be its headless Service")
        F.check(hs["spec"].get("clusterIP") == "None", w, "the scheduler Service must be headless")
        F.check({p["name"]: p["port"] for p in hs["spec"]["ports"]} == {"grpc": 8002, "metrics": 8000}, w, "scheduler Service ports")
        spec = pod_spec(sts)
        c = spec["containers"][0]
        F.check(c["command"] == ["dragonfly-scheduler", "--config", "/etc/dragonfly/config/scheduler.yaml"], w, "scheduler command")
        cfg, _ = config_of(r, sts_name, "scheduler.yaml", w)
        if cfg is not None:
            check_keys(f"{w} scheduler.yaml", cfg, keys["scheduler"])
            F.check(cfg.get("address") == "0.0.0.0:8002", w, "scheduler address")
            F.check(cfg.get("manager", {}).get("address") == mgr_dns, w, "scheduler manager.address")
            F.check(cfg.get("manager", {}).get("advertise_ip") is None, w, "scheduler advertise_ip must stay null (its pod IP, towards the manager)")
            check_member_security(f"{w} scheduler.yaml", cfg, "scheduler", mgr_dns, "/var/lib/dragonfly/scheduler", r)
        if secure:
            check_join_mount(f"{w} scheduler", spec, c, "scheduler", r)

    # Seed peers.
    seed_name = f"{RELEASE}-seed-client"
    seed = r.get("StatefulSet", seed_name)
    if F.check(seed is not None and r.get("Service", seed_name) is not None, w, "no seed-client StatefulSet and Service"):
        F.check(seed["spec"]["replicas"] == v["seedClient"]["replicas"], w, "seed replicas")
        vct = {t["metadata"]["name"]: t for t in seed["spec"].get("volumeClaimTemplates") or []}
        F.check("data" in vct, w, "the seed StatefulSet needs a volumeClaimTemplate for its root")
        if "data" in vct:
            F.check(vct["data"]["spec"]["resources"]["requests"]["storage"] == v["seedClient"]["persistence"]["size"], w, "seed volume size")
        spec = pod_spec(seed)
        c = spec["containers"][0]
        F.check((mount(c, "/var/lib/dragonfly") or {}).get("name") == "data", w, "the seed's root must be its claim")
        F.check(c["command"][:3] == ["dragonfly-snapshotter", "--config", "/etc/dragonfly/config/seed.yaml"] and "--seed-peer" in c["command"], w, "seed command")
        F.check(not c.get("securityContext", {}).get("privileged"), w, "a seed peer needs no privileges")
        cfg, _ = config_of(r, seed_name, "seed.yaml", w)
        if cfg is not None:
            check_keys(f"{w} seed.yaml", cfg, keys["snapshotter"])
            F.check(cfg.get("root") == "/var/lib/dragonfly", w, "seed root")
            F.check(cfg.get("containerd") == {"address": None}, w, "a seed peer has no containerd to ask (containerd.address: null)")
            p2p = cfg.get("p2p", {})
            F.check(p2p.get("listen") == "0.0.0.0:4000" and p2p.get("manager") == mgr_dns and p2p.get("seed_peer") is True, w, "seed p2p listen/manager/seed_peer")
            want = [] if secure else scheduler_names(r)
            F.check(p2p.get("schedulers") == want, w, f"seed p2p.schedulers {p2p.get('schedulers')}, want {want}")
            check_member_security(f"{w} seed.yaml", cfg, "seed", mgr_dns, "/var/lib/dragonfly", r)
        if secure:
            check_join_mount(f"{w} seed", spec, c, "seed", r)

    invariants_client(r, mgr_dns, placeholder, ip_env)

    # ServiceMonitors.
    sms = [o for _, o in r.objects if o["kind"] == "ServiceMonitor"]
    want = 0
    if v["metrics"]["serviceMonitor"]["enabled"]:
        want = 3 if v["client"]["mode"] == "undo" else 4
    F.check(len(sms) == want, w, f"{len(sms)} ServiceMonitors, want {want}")


def invariants_client(r: Render, mgr_dns: str, placeholder: str, ip_env: str) -> None:
    v = r.values
    cl = v["client"]
    mode = cl["mode"]
    secure = v["security"]["enabled"]
    w = f"[{r.name}] client"
    name = f"{RELEASE}-client"
    ds = r.get("DaemonSet", name)
    if not F.check(ds is not None, w, "no DaemonSet"):
        return
    spec = pod_spec(ds)
    F.check(spec.get("hostPID") is True and spec.get("hostNetwork") is True, w, "needs hostPID and hostNetwork")
    F.check(spec.get("dnsPolicy") == "ClusterFirstWithHostNet", w, "a hostNetwork pod needs dnsPolicy ClusterFirstWithHostNet")
    F.check(spec.get("priorityClassName") == "system-node-critical", w, "priorityClassName must be system-node-critical")
    F.check({"operator": "Exists"} in (spec.get("tolerations") or []), w, "must tolerate every taint (operator: Exists)")
    for c in containers(spec):
        if c["name"] != "done":
            F.check(c.get("securityContext", {}).get("privileged") is True, w, f"container {c['name']} must be privileged")
    scripts = r.get("ConfigMap", name)["data"]
    for k, text in scripts.items():
        if k.endswith(".sh"):
            sh_syntax(f"{w} {k}", text)
    inits = {c["name"]: c for c in spec.get("initContainers") or []}
    mains = {c["name"]: c for c in spec["containers"]}
    cfg_host = cl["setup"]["containerdConfig"]
    setup = scripts.get("setup.sh", "")

    def host_mounted(c: dict, host_dir: str) -> None:
        m = mount(c, "/host" + host_dir)
        ok = m is not None and ((volume(spec, m["name"]) or {}).get("hostPath") or {}).get("path") == host_dir
        F.check(ok, w, f"container {c['name']} must see the node's {host_dir} at /host{host_dir}")

    if mode in ("systemd", "pod") and cl["setup"]["enabled"]:
        want = f'dragonfly-snapshotter setup containerd --config "$cfg" --socket /run/dragonfly/snapshotter.sock'
        F.check(want in setup and f"cfg=/host{cfg_host}" in setup, w, "setup.sh must run `setup containerd` on the node's containerd config with the daemon's socket")
        F.check(("--default-snapshotter" in setup) == bool(cl["setup"]["defaultSnapshotter"]), w, "--default-snapshotter exactly when client.setup.defaultSnapshotter")
        F.check(("nsenter -t 1 -m -u -i -n -p -- systemctl restart containerd" in setup) == bool(cl["setup"]["restartContainerd"]), w, "containerd restarted (in the host's namespaces) exactly when client.setup.restartContainerd")

    cfg, _ = config_of(r, name, "snapshotter.yaml", w)
    if mode == "systemd":
        inst = inits.get("install")
        if F.check(inst is not None, w, "systemd mode needs the install init container"):
            args = inst["args"][0]
            F.check(args.startswith("sh /etc/dragonfly/config/install.sh"), w, "the install script runs first")
            # The daemon is up (install.sh waits for its socket) before containerd is pointed at it.
            F.check(("&& sh /etc/dragonfly/config/setup.sh" in args) == bool(cl["setup"]["enabled"]), w, "setup.sh must run after install.sh, in the same container, when client.setup.enabled")
            for d in [cl["systemd"]["binDir"], "/etc/dragonfly", "/etc/systemd/system", os.path.dirname(cfg_host)]:
                host_mounted(inst, d)
            F.check(mount(inst, "/run/dragonfly") is not None, w, "the install container must see the socket dir")
            if secure:
                check_join_mount(f"{w} install", spec, inst, "peer", r)
        install = scripts.get("install.sh", "")
        binpath = cl["systemd"]["binDir"] + "/dragonfly-snapshotter"
        for needle, why in [
            (f'put "$(command -v dragonfly-snapshotter)" /host{binpath} 0755', "installs the binary"),
            ("put /tmp/snapshotter.yaml /host/etc/dragonfly/snapshotter.yaml 0600", "installs the config (0600: it may hold registry credentials)"),
            ("put /etc/dragonfly/config/$unit /host/etc/systemd/system/$unit 0644", "installs the unit"),
            ("host systemctl enable $unit", "enables the unit"),
            ("host systemctl start $unit", "starts the unit"),
            ("until [ -S /run/dragonfly/snapshotter.sock ]", "waits for the socket"),
            (f'ip="${{{ip_env}:?', f"reads the manager Service IP from ${ip_env}"),
            (f's|{placeholder}|$ip|g', "substitutes the manager Service IP"),
            ("nsenter -t 1 -m -u -i -n -p --", "enters the host's namespaces"),
        ]:
            F.check(needle in install, w, f"install.sh {why}")
        F.check(("host systemctl restart $unit" in install) == bool(cl["systemd"]["restartOnChange"]), w, "the running daemon is restarted exactly when client.systemd.restartOnChange")
        F.check(("put /etc/dragonfly/join/peer /host/etc/dragonfly/join/peer 0600" in install) == secure, w, "install.sh copies the peer token to the host exactly when security is on")
        F.check(spec.get("enableServiceLinks") is True, w, "needs service links (the manager Service IP)")
        # The unit is config/dragonfly-snapshotter.service with the binary moved.
        ours = [l for l in scripts.get("dragonfly-snapshotter.service", "").splitlines() if not l.startswith("# Installed by")]
        ref = (EXAMPLES / "dragonfly-snapshotter.service").read_text().replace("/usr/local/bin/dragonfly-snapshotter", binpath).splitlines()
        F.check(ours == ref, w, "the unit differs from config/dragonfly-snapshotter.service (beyond the ExecStart path)")
        j = mains.get("journal")
        if F.check(j is not None, w, "systemd mode: the journal container"):
            F.check(j["command"][:4] == ["nsenter", "-t", "1", "-m"] and "dragonfly-snapshotter.service" in j["command"], w, "the journal container follows the host unit")
        F.check(ds["spec"]["updateStrategy"]["type"] == (cl["updateStrategy"] or {}).get("type", "RollingUpdate"), w, "systemd mode rolls (the daemon is not the pod)")
        manager = f"{placeholder}:65003"
    elif mode == "pod":
        d = mains.get("daemon")
        if F.check(d is not None, w, "pod mode: the daemon container"):
            F.check(d["command"] == ["dragonfly-snapshotter", "--config", "/etc/dragonfly/config/snapshotter.yaml"], w, "daemon command")
            for path, host in [(cl["root"], cl["root"]), ("/run/dragonfly", "/run/dragonfly")]:
                m = mount(d, path)
                hp = ((volume(spec, (m or {}).get("name", "")) or {}).get("hostPath") or {})
                F.check(m is not None and m.get("mountPropagation") == "Bidirectional" and hp.get("path") == host, w, f"{path} must be the node's, with Bidirectional propagation")
            fm = mount(d, "/dev/fuse")
            hp = ((volume(spec, (fm or {}).get("name", "")) or {}).get("hostPath") or {})
            F.check(fm is not None and hp == {"path": "/dev/fuse", "type": "CharDevice"}, w, "/dev/fuse must be the node's character device")
            sock_dir = os.path.dirname(cl["containerdSocket"])
            sm = mount(d, sock_dir)
            F.check(sm is not None and ((volume(spec, sm["name"]) or {}).get("hostPath") or {}).get("path") == sock_dir, w, "the daemon must see containerd's socket")
            if secure:
                check_join_mount(f"{w} daemon", spec, d, "peer", r)
        F.check(cl["root"].startswith("/var/lib/containerd/"), w, "the root should be under containerd's root (the kubelet's image filesystem)")
        if cl["setup"]["enabled"]:
            s = inits.get("setup")
            if F.check(s is not None, w, "pod mode with setup: the setup init container"):
                host_mounted(s, os.path.dirname(cfg_host))
        F.check(not cl["setup"]["defaultSnapshotter"] or not cl["setup"]["enabled"], w, "pod mode must not make dragonfly the CRI default")
        F.check(ds["spec"]["updateStrategy"]["type"] == (cl["updateStrategy"] or {}).get("type", "OnDelete"), w, "pod mode: OnDelete (a restart breaks running containers' lazy layers)")
        manager = mgr_dns
    else:  # undo
        u = inits.get("undo")
        if F.check(u is not None, w, "undo mode: the undo init container"):
            F.check(u["args"][0] == "sh /etc/dragonfly/config/setup.sh && sh /etc/dragonfly/config/undo.sh", w, "containerd is given its settings back before the daemon stops")
            for d in [cl["systemd"]["binDir"], "/etc/dragonfly", "/etc/systemd/system", os.path.dirname(cfg_host)]:
                host_mounted(u, d)
        F.check('dragonfly-snapshotter setup containerd --config "$cfg" --undo' in setup, w, "undo mode runs setup containerd --undo")
        F.check("host systemctl disable --now $unit" in scripts.get("undo.sh", ""), w, "undo mode stops and disables the unit")
        return

    if cfg is not None:
        check_keys(f"{w} snapshotter.yaml", cfg, allowed_keys()["snapshotter"])
        F.check(cfg.get("root") == cl["root"], w, "daemon root")
        F.check(cfg.get("address") == "/run/dragonfly/snapshotter.sock", w, "daemon socket")
        F.check(cfg.get("containerd", {}).get("address") == cl["containerdSocket"], w, "containerd socket")
        F.check(cfg.get("metrics", {}).get("address") == "0.0.0.0:9250", w, "metrics address")
        p2p = cfg.get("p2p", {})
        F.check(p2p.get("listen") == "0.0.0.0:4000" and p2p.get("manager") == manager, w, f"p2p listen/manager (want manager {manager})")
        F.check(not p2p.get("seed_peer"), w, "a node is no seed peer")
        want = scheduler_names(r) if (mode == "pod" and not secure) else []
        F.check(p2p.get("schedulers") == want, w, f"p2p.schedulers {p2p.get('schedulers')}, want {want}")
        check_member_security(f"{w} snapshotter.yaml", cfg, "peer", manager, cl["root"], r)


def real_loaders(r: Render, counts: dict) -> None:
    """Every daemon and manager config the chart writes, loaded by the binaries themselves
    (their serde structs refuse unknown keys and bad values), when scripts/test.sh has built
    them (DRAGONFLY_SNAPSHOTTER_BIN, DRAGONFLY_MANAGER_BIN); the manager Service's cluster
    IP put in as the containers do. The scheduler has no command that only loads its config."""
    bins = {k: os.environ.get(f"DRAGONFLY_{k.upper()}_BIN", "") for k in ("snapshotter", "manager")}
    configs = [("manager", f"{RELEASE}-manager", "manager.yaml"), ("snapshotter", f"{RELEASE}-seed-client", "seed.yaml"), ("snapshotter", f"{RELEASE}-client", "snapshotter.yaml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAGONFLY_")} | {"RUST_BACKTRACE": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        for comp, cm, key in configs:
            b = bins[comp]
            if not (b and os.access(b, os.X_OK)):
                continue
            obj = r.get("ConfigMap", cm)
            if obj is None or key not in obj.get("data", {}):
                continue
            path = Path(tmp) / f"{cm}-{key}"
            path.write_text(obj["data"][key].replace("@MANAGER_SERVICE_IP@", "10.96.0.10"))
            if comp == "manager":
                (Path(tmp) / "manager").mkdir(exist_ok=True)
                cmd = [b, "--config", str(path), "--data-dir", str(Path(tmp) / "manager"), "join-token", "list"]
            else:
                cmd = [b, "--config", str(path), "setup", "containerd", "--config", str(Path(tmp) / "none/config.toml"), "--undo"]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
            if F.check(p.returncode == 0, f"[{r.name}] {cm}/{key}", f"refused by {os.path.basename(b)}: {(p.stderr or p.stdout).strip()[:400]}"):
                counts["loaded"] = counts.get("loaded", 0) + 1


def source_checks() -> None:
    """What a render cannot show: the generated Secrets keep their values across upgrades."""
    for f, key in [("templates/join-secret.yaml", "join"), ("templates/manager/secret.yaml", "manager")]:
        text = (CHART / f).read_text()
        F.check('lookup "v1" "Secret" .Release.Namespace $name' in text, f, "must look up the existing Secret so upgrades keep its values")
        F.check("randAlphaNum" in text, f, "generates its values with randAlphaNum")


# ---------------------------------------------------------------------------------------
# Plain manifests


def plain_files(r: Render) -> dict[str, str]:
    """config/kubernetes as it must be: one file per template (the generated Secrets left out),
    a Namespace, and the kustomization listing them."""
    header = PLAIN_HEADER.format(r=RELEASE, ns=NAMESPACE)
    out: dict[str, str] = {}
    for path, text in sorted(r.manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs = [d for d in yaml.safe_load_all(text) if d]
        if not docs or all(d["kind"] == "Secret" and d["metadata"]["name"] in GENERATED_SECRETS for d in docs):
            continue
        F.check(not any(d["kind"] == "Secret" for d in docs), path, "a Secret shares its template with other objects")
        rel = path.split("/templates/", 1)[1]
        # The rendered text as it is (the templates' comments explain the objects).
        out[rel.replace("/", "-")] = header + "---\n" + text.strip("\n") + "\n"
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}
    out["namespace.yaml"] = header + "# The node DaemonSet is privileged: Pod Security admission must allow it here.\n" + yaml.safe_dump(ns, sort_keys=False)
    resources = ["namespace.yaml"] + sorted(k for k in out if k != "namespace.yaml")
    out["kustomization.yaml"] = header + (
        "# Create the two Secrets first (docs/kubernetes.md, \"Plain manifests\"): the join tokens\n"
        f"# ({RELEASE}-join) and root's password ({RELEASE}-manager); they are not committed.\n"
    ) + yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": NAMESPACE, "resources": resources}, sort_keys=False)
    return out


def check_plain(r: Render, write: bool, counts: dict) -> None:
    want = plain_files(r)
    if write:
        if PLAIN.exists():
            for p in PLAIN.glob("*.yaml"):
                p.unlink()
        PLAIN.mkdir(parents=True, exist_ok=True)
        for k, text in want.items():
            (PLAIN / k).write_text(text)
        print(f"wrote {len(want)} files to {PLAIN.relative_to(REPO)}")
    have = {p.name: p.read_text() for p in PLAIN.glob("*")} if PLAIN.exists() else {}
    w = "config/kubernetes"
    for k in sorted(set(want) | set(have)):
        if k not in have:
            F.check(False, w, f"{k} is missing (scripts/k8s/validate.py --write regenerates the directory)")
        elif k not in want:
            F.check(False, w, f"{k} is not rendered from the chart (remove it, or change the chart)")
        else:
            F.check(have[k] == want[k], w, f"{k} differs from a fresh render of the chart's defaults (scripts/k8s/validate.py --write)")
    kust = yaml.safe_load(have.get("kustomization.yaml", "{}")) or {}
    listed = kust.get("resources") or []
    files = sorted(k for k in have if k != "kustomization.yaml")
    F.check(sorted(listed) == files, w, f"kustomization.yaml lists {sorted(listed)}, the directory holds {files}")
    F.check(len(set(listed)) == len(listed), w, "kustomization.yaml lists a file twice")
    objects = []
    for k in listed:
        if k in have:
            objects += [d for d in yaml.safe_load_all(have[k]) if d]
    F.check(not any(o["kind"] == "Secret" for o in objects), w, "no Secret may be committed (their values are generated per install)")
    # The directory with the kubernetes-validate command itself, as a user would run it.
    for v in KUBE_VERSIONS:
        paths = [str(PLAIN / k) for k in listed if k in have]
        p = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", v, *paths], capture_output=True, text=True)
        F.check(p.returncode == 0, w, f"kubernetes-validate --strict -k {v}: {(p.stdout + p.stderr).strip()}")
        counts[f"plain {v}"] = f"kubernetes-validate --strict -k {v}: {len(objects)} objects valid"
    kubectl = shutil.which("kubectl")
    if kubectl:
        p = subprocess.run([kubectl, "kustomize", str(PLAIN)], capture_output=True, text=True, timeout=60)
        if F.check(p.returncode == 0, w, f"kubectl kustomize: {p.stderr.strip()}"):
            built = [d for d in yaml.safe_load_all(p.stdout) if d]
            key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
            F.check(sorted(map(key, built)) == sorted(map(key, objects)), w, "kubectl kustomize builds other objects than the files hold")
            by = {key(o): o for o in objects}
            for o in built:
                F.check(by.get(key(o)) == o, w, f"kubectl kustomize changes {key(o)}")
            ver = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True).stdout.splitlines()
            counts["kustomize"] = f"kubectl kustomize builds the same {len(built)} objects ({'; '.join(x.strip() for x in ver)})"
    else:
        F.warn("kubectl is not installed: kustomization.yaml checked by this script only (every file listed, each object valid), not built by kustomize")
        counts["kustomize"] = "kubectl kustomize not run (no kubectl); kustomization.yaml's resources checked here"


# ---------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="regenerate config/kubernetes from the chart first")
    args = ap.parse_args()
    t0 = time.monotonic()
    cases = [("defaults", {})]
    for f in sorted((CHART / "ci").glob("*.yaml")):
        cases.append((f.stem, yaml.safe_load(f.read_text()) or {}))
    results: list[tuple[str, bool]] = []  # (case, passed)

    def case(name: str, before: int) -> None:
        results.append((name, len(F.items) == before))

    lines = []
    n = len(F.items)
    source_checks()
    m = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M | re.S)
    with helm.Chart.load(str(CHART)) as chart:
        F.check(m is not None and chart.metadata.get("appVersion") == m.group(1), "Chart.yaml", "appVersion must be the workspace version in Cargo.toml")
        case("chart sources", n)
        defaults = None
        for name, overrides in cases:
            n = len(F.items)
            try:
                r = Render(name, overrides, chart)
            except helm.HelmError as e:
                F.check(False, f"[{name}]", f"does not render: {e}")
                case(name, n)
                continue
            for kv in KUBE_VERSIONS:
                rep = helm.lint(str(CHART), overrides, strict=True, kube_version=f"v{kv}")
                bad = [x for x in rep.get("messages", []) if x.get("severity", 0) >= 2] + [{"error": e} for e in rep.get("errors") or []]
                F.check(not bad, f"[{name}] helm lint --strict (Kubernetes {kv})", "; ".join(str(b.get("error")) for b in bad))
            counts = {v: 0 for v in KUBE_VERSIONS} | {"crd": 0}
            validate_schemas(r, counts)
            invariants(r)
            real_loaders(r, counts)
            per = ", ".join(f"{counts[v]} valid for Kubernetes {v}" for v in KUBE_VERSIONS)
            crd = f", {counts['crd']} ServiceMonitors shape-checked" if counts["crd"] else ""
            crd += f", {counts['loaded']} configs loaded by the binaries" if counts.get("loaded") else ""
            lines.append(f"  {name:<18} {len(r.objects):>3} objects: {per}{crd}")
            case(name, n)
            if name == "defaults":
                defaults = r
        for overrides, message in REFUSED:
            n = len(F.items)
            try:
                chart.render(overrides, name=RELEASE, namespace=NAMESPACE)
                F.check(False, f"refused {overrides}", "renders, but must be refused")
            except helm.HelmError as e:
                F.check(message in str(e), f"refused {overrides}", f"refused with another message: {e}")
            case(f"refused {overrides}", n)
    lines.append(f"  refused values     {len(REFUSED)} cases")
    if not any(os.environ.get(f"DRAGONFLY_{k}_BIN") for k in ("SNAPSHOTTER", "MANAGER")):
        lines.append("  (configs not loaded by the binaries: DRAGONFLY_SNAPSHOTTER_BIN and DRAGONFLY_MANAGER_BIN unset; scripts/test.sh sets them)")
    n = len(F.items)
    plain_counts: dict = {}
    if defaults is not None:
        check_plain(defaults, args.write, plain_counts)
    case("config/kubernetes", n)
    for k, val in plain_counts.items():
        lines.append(f"  config/kubernetes  {val}")

    sdk = importlib.metadata.version("helm-python-sdk")
    kv = importlib.metadata.version("kubernetes-validate")
    print(f"kubernetes manifests: chart rendered and linted by helm-python-sdk {sdk} (Helm {helm.helm_sdk_version()}), objects validated strictly with kubernetes-validate {kv}")
    print("\n".join(lines))
    for msg in F.warnings:
        print(f"WARNING: {msg}")
    for msg in F.items:
        print(f"FAIL: {msg}")
    failed = sum(1 for _, ok in results if not ok)
    print(f"kubernetes manifests: {len(F.items)} failed checks, {time.monotonic() - t0:.1f} s")
    print(f"k8s: {len(results) - failed} passed, {failed} failed")
    return 1 if F.items else 0


if __name__ == "__main__":
    sys.exit(main())
