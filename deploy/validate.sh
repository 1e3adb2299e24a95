#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/kubernetes/ (or in the directory given as the
# first argument) without a cluster:
#
#   deploy/validate.sh [DIR]
#
# 1. Schema: every manifest, against the OpenAPI schemas of Kubernetes $KUBERNETES_VERSION,
#    with kubernetes-validate (PyPI; installed with pip when missing or too old) in strict mode,
#    so a misspelt or misplaced field fails, not only a wrong type. kubernetes-validate only
#    WARNs about a kind it has no schema for (a typo in `kind:` or `apiVersion:` included):
#    here that is a failure too.
# 2. The ServiceMonitor (monitoring.coreos.com/v1) is a custom resource: kubernetes-validate has
#    no schema for it and cannot load one, so its schema check is skipped with a message, and
#    step 4 checks what matters for scraping. With SERVICEMONITOR_CRD=/path/to/
#    monitoring.coreos.com_servicemonitors.yaml (the prometheus-operator's CRD, e.g. from its
#    example/prometheus-operator-crd/ directory) it is also validated, strictly, against that
#    CRD's openAPIV3Schema.
# 3. kustomization.yaml: rendered with `kubectl kustomize` (or `kustomize build`) when one is
#    installed, and the rendering validated as in 1; skipped with a message otherwise.
# 4. Consistency, which no schema sees: what the API server would refuse although the schema
#    allows it (allowPrivilegeEscalation: false with privileged: true or with a capability
#    spelled CAP_SYS_ADMIN), what the observer would refuse at start (any EVENTFLUX_PROBE_*
#    variable in the DaemonSet: it is configured by flags only, and an unknown variable stops
#    it), and what ties the files together: namespace and ServiceAccount names; no RBAC grant
#    and no API token (the observer never calls the API server); the DaemonSet's container
#    name, `metrics` port, --listen address, probe paths and prometheus.io/* annotations against
#    each other and against the container-name filter of
#    dashboards/prometheus/prometheus-kubernetes.yml; the Service's selector against the pods'
#    labels; the ServiceMonitor's selector and port against the Service; the capability set of
#    the least-privilege DaemonSet.
#
# Exits 0 when everything passed, 1 otherwise.
set -euo pipefail

# The newest Kubernetes version kubernetes-validate 1.37.0 has schemas for.
KUBERNETES_VERSION=1.37.0
VALIDATOR_VERSION=1.37.0

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo/deploy/kubernetes}"
dir="$(cd "$dir" && pwd)"
python="${PYTHON:-python3}"

if ! "$python" - "$VALIDATOR_VERSION" 2>/dev/null <<'PY'
import sys
import kubernetes_validate
from packaging.version import Version
sys.exit(Version(kubernetes_validate.__version__) < Version(sys.argv[1]))
PY
then
    echo "validate: installing kubernetes-validate>=$VALIDATOR_VERSION from PyPI"
    "$python" -m pip install --quiet --upgrade "kubernetes-validate>=$VALIDATOR_VERSION"
fi
echo "validate: kubernetes-validate $("$python" -m kubernetes_validate --version), Kubernetes $KUBERNETES_VERSION, strict"

passed=0
failed=0

# Runs kubernetes-validate on one file; a WARN (no schema for the kind) is a failure.
schema_check() {
    local file="$1" label="$2" out rc=0
    out="$("$python" -m kubernetes_validate -k "$KUBERNETES_VERSION" --strict "$file" 2>&1)" || rc=$?
    [ -n "$out" ] && printf '%s\n' "$out"
    if [ "$rc" -ne 0 ] || grep -q '^WARN' <<<"$out"; then
        echo "FAIL $label"
        failed=$((failed + 1))
    else
        passed=$((passed + 1))
    fi
}

shopt -s nullglob
files=("$dir"/*.yaml "$dir"/*.yml)
if [ "${#files[@]}" -eq 0 ]; then
    echo "FAIL no manifests in $dir"
    exit 1
fi

# 1 and 2: every manifest.
for f in "${files[@]}"; do
    name="$(basename "$f")"
    if [ "$name" = kustomization.yaml ] || [ "$name" = kustomization.yml ]; then
        continue # a kustomize configuration, not a resource: step 3
    fi
    if grep -q '^apiVersion: *monitoring\.coreos\.com/' "$f"; then
        echo "SKIP $f: a prometheus-operator custom resource; kubernetes-validate has no schema for it (consistency checked below${SERVICEMONITOR_CRD:+, schema against $SERVICEMONITOR_CRD})"
        continue
    fi
    schema_check "$f" "$f"
done

# 3: the kustomization, rendered.
if [ -f "$dir/kustomization.yaml" ]; then
    render=""
    if command -v kubectl >/dev/null 2>&1; then
        render="kubectl kustomize"
    elif command -v kustomize >/dev/null 2>&1; then
        render="kustomize build"
    fi
    if [ -n "$render" ]; then
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        if $render "$dir" >"$tmp/rendered.yaml" 2>"$tmp/render.err"; then
            echo "validate: $render $dir: $(grep -c '^kind:' "$tmp/rendered.yaml") resources"
            schema_check "$tmp/rendered.yaml" "$render $dir"
        else
            cat "$tmp/render.err"
            echo "FAIL $render $dir"
            failed=$((failed + 1))
        fi
    else
        echo "SKIP $dir/kustomization.yaml: neither kubectl nor kustomize is installed to render it (its resource list is still checked below)"
    fi
fi

# 4: consistency.
cross_rc=0
"$python" - "$dir" "$repo/dashboards/prometheus/prometheus-kubernetes.yml" "${SERVICEMONITOR_CRD:-}" <<'PY' || cross_rc=$?
import os
import re
import sys

import yaml

directory, prom_config, crd_path = sys.argv[1:4]
NS = "eventflux-probe"
NAME = "eventflux-probe"
checks = 0
errors = []


def check(ok, where, msg):
    global checks
    checks += 1
    if not ok:
        errors.append(f"{where}: {msg}")
    return ok


docs = []
for name in sorted(os.listdir(directory)):
    if not name.endswith((".yaml", ".yml")) or name.startswith("kustomization."):
        continue
    with open(os.path.join(directory, name)) as fh:
        try:
            docs += [(name, d) for d in yaml.safe_load_all(fh) if d]
        except yaml.YAMLError as e:
            check(False, name, f"not YAML: {e}")


def of(kind):
    return [(f, d) for f, d in docs if isinstance(d, dict) and d.get("kind") == kind]


def meta(d):
    return d.get("metadata") or {}


def subset(small, big):
    return bool(small) and all((big or {}).get(k) == v for k, v in small.items())


def cap(c):
    return c.upper().removeprefix("CAP_")


# Namespace, and every namespaced object in it.
namespaces = of("Namespace")
check([meta(d).get("name") for _, d in namespaces] == [NS], "namespace", f"exactly one Namespace, {NS}")
for f, d in namespaces:
    labels = meta(d).get("labels") or {}
    check(labels.get("pod-security.kubernetes.io/enforce") == "privileged", f,
          "Pod Security level must be privileged (hostPID and added capabilities)")
for f, d in docs:
    if d.get("kind") not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):  # cluster-scoped
        check(meta(d).get("namespace") == NS, f, f"{d.get('kind')} {meta(d).get('name')} not in namespace {NS}")

# Identity: a ServiceAccount and no grant. The observer reads /proc and the kernel only; no
# feature of it calls the API server, so a Role or binding here would be a grant for nothing.
accounts = {(meta(d).get("name"), meta(d).get("namespace")) for _, d in of("ServiceAccount")}
check(accounts == {(NAME, NS)}, "rbac", f"exactly one ServiceAccount, {NS}/{NAME}")
for kind in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"):
    for f, d in of(kind):
        check(False, f, f"{kind} {meta(d).get('name')}: the observer needs no API access")

# The container name the sample Prometheus config keeps.
container_regex = None
if os.path.exists(prom_config):
    with open(prom_config) as fh:
        prom = yaml.safe_load(fh)
    for job in prom.get("scrape_configs") or []:
        for r in job.get("relabel_configs") or []:
            if r.get("source_labels") == ["__meta_kubernetes_pod_container_name"] and r.get("action") == "keep":
                container_regex = r.get("regex")
    check(container_regex is not None, prom_config, "no keep rule on __meta_kubernetes_pod_container_name")
else:
    print(f"SKIP the container-name filter: {prom_config} not found")

# DaemonSets.
daemonsets = of("DaemonSet")
check(len(daemonsets) >= 1, "daemonsets", "no DaemonSet")
pod_labels = None
listen_port = None
for f, d in daemonsets:
    where = f"{f} DaemonSet {meta(d).get('name')}"
    spec = d.get("spec") or {}
    tmpl = spec.get("template") or {}
    labels = meta(tmpl).get("labels") or {}
    pod = tmpl.get("spec") or {}
    check(meta(d).get("name") == NAME, where, f"must be named {NAME} (the variants replace each other)")
    check(subset((spec.get("selector") or {}).get("matchLabels"), labels), where,
          "selector.matchLabels do not match the pod template's labels")
    if pod_labels is None:
        pod_labels = labels
    check(labels == pod_labels, where, "pod labels differ between the DaemonSet variants")
    check(pod.get("hostPID") is True, where, "hostPID must be true (the node's processes)")
    check((pod.get("serviceAccountName"), NS) in accounts, where,
          f"serviceAccountName {pod.get('serviceAccountName')} is no ServiceAccount here")
    check(pod.get("terminationGracePeriodSeconds", 30) >= 15, where,
          "terminationGracePeriodSeconds must exceed the 5 s drain plus detaching")
    strategy = spec.get("updateStrategy") or {}
    check(strategy.get("type") == "RollingUpdate"
          and (strategy.get("rollingUpdate") or {}).get("maxUnavailable") == 1
          and (strategy.get("rollingUpdate") or {}).get("maxSurge", 0) == 0, where,
          "updateStrategy must be RollingUpdate, maxUnavailable 1, no surge")
    check(any(t.get("operator") == "Exists" and not t.get("key") for t in pod.get("tolerations") or [])
          or any(t.get("key") == "node-role.kubernetes.io/control-plane" for t in pod.get("tolerations") or []),
          where, "must tolerate the control-plane taint")
    containers = [c for c in pod.get("containers") or [] if c.get("name") == NAME]
    if not check(len(containers) == 1, where, f"needs exactly one container named {NAME}"):
        continue
    c = containers[0]
    if container_regex is not None:
        check(re.fullmatch(container_regex, c["name"]) is not None, where,
              f"container {c['name']} is dropped by {prom_config}'s keep regex {container_regex!r}")
    args = c.get("args") or []
    check(args[:1] == ["node"], where, "args must start with the node subcommand")
    listen = None
    for i, a in enumerate(args):
        if a == "--listen" and i + 1 < len(args):
            listen = args[i + 1]
        elif a.startswith("--listen="):
            listen = a.split("=", 1)[1]
    m = re.fullmatch(r"0\.0\.0\.0:(\d+)", listen or "")
    if check(m is not None, where, f"--listen must be 0.0.0.0:PORT to be scraped, got {listen}"):
        port = int(m.group(1))
        listen_port = port
        named = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        check(named.get("metrics") == port, where, f"container port `metrics` must be {port} (--listen)")
        ann = meta(tmpl).get("annotations") or {}
        check(ann.get("prometheus.io/scrape") == "true", where, 'annotation prometheus.io/scrape must be "true"')
        check(ann.get("prometheus.io/port") == str(port), where, f'annotation prometheus.io/port must be "{port}"')
        check(ann.get("prometheus.io/path", "/metrics") == "/metrics", where, "annotation prometheus.io/path must be /metrics")
        for probe, path in (("livenessProbe", "/live"), ("readinessProbe", "/ready")):
            get = ((c.get(probe) or {}).get("httpGet") or {})
            check(get.get("path") == path and get.get("port") in ("metrics", port), where,
                  f"{probe} must GET {path} on port metrics")
    check(pod.get("automountServiceAccountToken") is False, where,
          "automountServiceAccountToken must be false (the observer never calls the API server)")
    # Flags only. The observer refuses, at start, an EVENTFLUX_PROBE_* variable that is no
    # setting of its configuration; none is set here, so none can be stale or misspelt.
    # (envFrom could bring in any name: not allowed either.)
    for e in c.get("env") or []:
        check(not str(e.get("name", "")).startswith("EVENTFLUX_PROBE_"), where,
              f"env {e.get('name')}: configure the observer with args, not EVENTFLUX_PROBE_* variables "
              "(an unknown one stops it at start)")
    check(not c.get("envFrom"), where, "no envFrom: its variables are unchecked (EVENTFLUX_PROBE_* ones would be read)")
    sc = c.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    added = [str(x) for x in caps.get("add") or []]
    # The API server's own rules (ValidateSecurityContext), which no schema expresses.
    if sc.get("allowPrivilegeEscalation") is False:
        check(sc.get("privileged") is not True, where,
              "the API server refuses allowPrivilegeEscalation: false with privileged: true")
        check("CAP_SYS_ADMIN" not in added, where,
              "the API server refuses allowPrivilegeEscalation: false with capabilities.add CAP_SYS_ADMIN")
    check(sc.get("runAsUser") == 0, where, "must run as uid 0 (added capabilities are effective for root only)")
    check(sc.get("readOnlyRootFilesystem") is True, where, "readOnlyRootFilesystem must be true")
    if sc.get("privileged") is not True:
        check([cap(x) for x in caps.get("drop") or []] == ["ALL"], where, "must drop ALL capabilities")
        want = {"SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"}
        check({cap(x) for x in added} == want, where,
              f"must add exactly {sorted(want)}, adds {sorted(cap(x) for x in added)}")
        check(pod.get("hostNetwork") is not True and pod.get("hostIPC") is not True, where,
              "least privilege: no hostNetwork, no hostIPC")

# Service.
services = of("Service")
svc_ports = {}
svc_labels = {}
for f, d in services:
    where = f"{f} Service {meta(d).get('name')}"
    spec = d.get("spec") or {}
    check(spec.get("clusterIP") == "None", where, "must be headless (clusterIP: None)")
    check(pod_labels is not None and subset(spec.get("selector"), pod_labels), where,
          "selector does not match the DaemonSet's pod labels")
    ports = {p.get("name"): p for p in spec.get("ports") or []}
    m = ports.get("metrics")
    if check(m is not None, where, "needs a port named metrics"):
        check(m.get("targetPort") in ("metrics", listen_port), where, "port metrics must target the container's metrics port")
    svc_ports = ports
    svc_labels = meta(d).get("labels") or {}
    check(meta(d).get("name") == NAME, where, f'must be named {NAME}: the ServiceMonitor\'s job label, which the alert rules expect (job="{NAME}")')

# ServiceMonitor.
for f, d in of("ServiceMonitor"):
    where = f"{f} ServiceMonitor {meta(d).get('name')}"
    spec = d.get("spec") or {}
    check(services != [], where, "no Service to select")
    check(subset((spec.get("selector") or {}).get("matchLabels"), svc_labels), where,
          "selector.matchLabels do not match the Service's labels")
    names = (spec.get("namespaceSelector") or {}).get("matchNames")
    check(names is None or NS in names, where, f"namespaceSelector must include {NS}")
    for ep in spec.get("endpoints") or []:
        check(ep.get("port") in svc_ports, where, f"endpoint port {ep.get('port')} is not a named port of the Service")
        check(ep.get("path", "/metrics") == "/metrics", where, "endpoint path must be /metrics")
        check(any(r.get("sourceLabels") == ["__meta_kubernetes_pod_node_name"] and r.get("targetLabel") == "node"
                  for r in ep.get("relabelings") or []), where, "relabelings must copy __meta_kubernetes_pod_node_name to node")
    if crd_path:
        import jsonschema

        with open(crd_path) as fh:
            crd = yaml.safe_load(fh)
        schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == "v1")

        def strict(s):
            # Unknown fields fail, as `kubectl apply` (server-side field validation, Strict) makes them.
            if isinstance(s, dict):
                if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
                    s["additionalProperties"] = False
                for v in s.values():
                    strict(v)
            elif isinstance(s, list):
                for v in s:
                    strict(v)
            return s

        errs = sorted(jsonschema.Draft7Validator(strict(schema)).iter_errors(d), key=lambda e: list(e.path))
        check(not errs, where, "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errs)
              + f" (against {crd_path})")
        if not errs:
            print(f"INFO {f} passed for resource servicemonitor/{meta(d).get('name')} against {crd_path}")

# kustomization.yaml: its resources exist; the alternatives are not in it.
kpath = os.path.join(directory, "kustomization.yaml")
if os.path.exists(kpath):
    with open(kpath) as fh:
        k = yaml.safe_load(fh) or {}
    resources = k.get("resources") or []
    for r in resources:
        check(os.path.exists(os.path.join(directory, r)), "kustomization.yaml", f"resource {r} does not exist")
    for r in ("namespace.yaml", "rbac.yaml", "service.yaml", "daemonset.yaml"):
        check(r in resources, "kustomization.yaml", f"must list {r}")
    check("daemonset-privileged.yaml" not in resources, "kustomization.yaml",
          "must not list the privileged variant (it is the alternative to daemonset.yaml)")

for e in errors:
    print(f"FAIL {e}")
print(f"validate: consistency: {checks - len(errors)} of {checks} checks passed")
sys.exit(1 if errors else 0)
PY
if [ "$cross_rc" -eq 0 ]; then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
fi

echo "validate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
