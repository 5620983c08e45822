"""Offline checks of the Helm chart: lint, render, schema-validate, and make sure it can fail.

Run by scripts/helm-check.sh inside its venv (helm-python-sdk bundles Helm's Go engine as a
library; kubernetes-validate ships the Kubernetes OpenAPI schemas). No cluster is contacted.
Usage: check.py REPO_ROOT OUT_DIR
"""

import copy
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "farm", "archfarm"
MINIMAL = {"database": {"url": "postgres://archfarm:secret@postgres.db.svc:5432/archfarm"}}
# Custom resources are not in the Kubernetes schemas: each gets a small hand-written schema.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
}
# ARCHFARM_* variables the chart sets ahead of the code that reads them (being added on main).
PENDING_ENV = {"ARCHFARM_REPLICA_NAME": "coordinator --replica-name"}

failures: list[str] = []
refused: list[str] = []  # the must-fail checks that failed as they should


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL {msg}")


def ok(msg: str) -> None:
    print(f"  ok   {msg}")


def lint(chart: Path, name: str, values: dict) -> None:
    report = helm.lint(chart, values, strict=True, kube_version=f"v{KUBE_VERSION}", namespace=NAMESPACE)
    # Severity 1 is INFO (e.g. "icon is recommended"); 2 WARNING and 3 ERROR fail the check.
    bad = [m for m in report.get("messages") or [] if m["severity"] >= 2]
    infos = [m for m in report.get("messages") or [] if m["severity"] < 2]
    for m in bad:
        fail(f"lint {name}: {m['path']}: {m['error']}")
    for e in report.get("errors") or []:
        fail(f"lint {name}: {e}")
    if not bad and not report.get("errors"):
        ok(f"helm lint --strict ({name}): 0 warnings, 0 errors, {len(infos)} info"
           + "".join(f"\n         info: {m['error']}" for m in infos))


def render(chart: Path, values: dict) -> list[dict]:
    with helm.Chart.load(chart) as c:
        c.validate_schema(values)
        files = c.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def validate_custom(doc: dict, schemas: Path) -> None:
    """Validates a custom resource against its schema in helm/check/schemas."""
    schema = json.loads((schemas / CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]).read_text())
    jsonschema.Draft7Validator(schema).validate(doc)


def validate(docs: list[dict], schemas: Path) -> tuple[int, int]:
    """Validates each manifest; returns (Kubernetes kinds, custom resources) validated."""
    kube = crd = 0
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        key = (doc.get("apiVersion"), doc.get("kind"))
        try:
            if key in CRD_SCHEMAS:
                validate_custom(doc, schemas)
                crd += 1
            else:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
                kube += 1
        except jsonschema.ValidationError as e:
            fail(f"{what}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
        except kubernetes_validate.utils.SchemaNotFoundError as e:
            fail(f"{what}: {e.message} (no schema, so not validated)")
    return kube, crd


def env_names(docs: list[dict]) -> dict[str, set[str]]:
    """ARCHFARM_* names the manifests set, by component (coordinator or agent)."""
    found: dict[str, set[str]] = {"coordinator": set(), "agent": set()}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            found["coordinator"] |= set(doc["data"])
            continue
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            who = "coordinator" if c["name"] == "coordinator" else "agent" if c["name"] == "agent" else None
            if who:
                found[who] |= {e["name"] for e in c.get("env", [])}
    return {k: {n for n in v if n.startswith("ARCHFARM_")} for k, v in found.items()}


def check_against_code(root: Path, docs: list[dict]) -> None:
    """The chart must set only variables the binaries read, and probe what the coordinator serves."""
    for who, names in env_names(docs).items():
        src = (root / who / "src" / "config.rs").read_text()
        known = set(re.findall(r'env = "(ARCHFARM_[A-Z_]+)"', src))
        unknown = sorted(names - known - set(PENDING_ENV))
        for n in unknown:
            fail(f"{n} is set for the {who} but {who}/src/config.rs has no such variable")
        for n in sorted((names & set(PENDING_ENV)) - known):
            print(f"  note {n}: not in {who}/src/config.rs yet ({PENDING_ENV[n]}); clap ignores it until then")
        if not unknown:
            ok(f"{len(names & known)} ARCHFARM_* variables of the {who} are read by {who}/src/config.rs")
    api = (root / "coordinator/src/api/mod.rs").read_text()
    probes = {p["httpGet"]["path"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
              for c in d["spec"]["template"]["spec"]["containers"]
              for p in (c.get("readinessProbe"), c.get("livenessProbe")) if p}
    for path in sorted(probes):
        # Routes are registered with what they need: `.get("/healthz", Access::Public, …)`; a
        # probe carries no token, so only a public GET route will do.
        if re.search(rf'\.get\(\s*"{re.escape(path)}",\s*Access::Public\b', api):
            ok(f"probe path {path} is a public GET route in coordinator/src/api/mod.rs")
        else:
            fail(f"probe path {path} is not a public GET route in coordinator/src/api/mod.rs")


def check_references(docs: list[dict]) -> None:
    """What no schema sees: names one manifest uses must exist in another."""
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    secrets = {d["metadata"]["name"]: set(d.get("data", {})) for d in by_kind.get("Secret", [])}
    configmaps = {d["metadata"]["name"] for d in by_kind.get("ConfigMap", [])}
    service_ports = {p["name"] for d in by_kind.get("Service", []) for p in d["spec"]["ports"]}
    workloads = [d for k in ("Deployment", "StatefulSet", "DaemonSet") for d in by_kind.get(k, [])]
    problems = []
    for d in workloads:
        pod = d["spec"]["template"]["spec"]
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            where = f"{d['kind']}/{d['metadata']['name']} {c['name']}"
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in (c.get("readinessProbe"), c.get("livenessProbe")):
                if probe and probe["httpGet"]["port"] not in ports:
                    problems.append(f"{where}: probe port {probe['httpGet']['port']} is not a container port")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                # Only the chart's own Secret can be checked; a user's is named in the values.
                if ref and ref["name"] in secrets and ref["key"] not in secrets[ref["name"]]:
                    problems.append(f"{where}: {e['name']} reads key {ref['key']} that Secret {ref['name']} lacks")
            for src in c.get("envFrom", []):
                if "configMapRef" in src and src["configMapRef"]["name"] not in configmaps:
                    problems.append(f"{where}: no ConfigMap {src['configMapRef']['name']}")
    for d in by_kind.get("Service", []):
        targets = {p["name"] for w in workloads for c in w["spec"]["template"]["spec"]["containers"]
                   for p in c.get("ports", [])}
        problems += [f"Service {d['metadata']['name']}: targetPort {p['targetPort']} is no container port"
                     for p in d["spec"]["ports"] if p["targetPort"] not in targets]
    for d in by_kind.get("ServiceMonitor", []):
        problems += [f"ServiceMonitor: port {e['port']} is not a Service port"
                     for e in d["spec"]["endpoints"] if e["port"] not in service_ports]
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    for d in by_kind.get("ScaledObject", []):
        target = deployments.get(d["spec"]["scaleTargetRef"]["name"])
        if target is None:
            problems.append(f"ScaledObject {d['metadata']['name']}: no Deployment to scale")
        elif "replicas" in target["spec"]:
            problems.append(f"Deployment {target['metadata']['name']}: sets replicas that KEDA owns")
    for p in problems:
        fail(p)
    if not problems:
        ok("cross-references hold (ports, probe ports, the chart's Secret keys, ConfigMap, scale targets)")


def check_keda_metric(root: Path, docs: list[dict]) -> None:
    metrics = (root / "coordinator/src/metrics.rs").read_text()
    if not re.search(r'"archfarm_queued_builds".*\n\s*&\["platform"\]', metrics):
        fail("coordinator/src/metrics.rs no longer has archfarm_queued_builds{platform}")
    for d in docs:
        if d["kind"] == "ScaledObject":
            q = d["spec"]["triggers"][0]["metadata"]["query"]
            if not q.startswith("max(archfarm_queued_builds{platform="):
                fail(f"ScaledObject {d['metadata']['name']}: unexpected query {q}")
    ok("KEDA queries use archfarm_queued_builds{platform}, as coordinator/src/metrics.rs names it")


def write_binfmt_test_files(chart: Path, out: Path) -> None:
    """The QEMU DaemonSet's registration script as rendered, and an arm64 program to run through
    it, for binfmt-test.sh (which runs them in a private namespace)."""
    values = dict(MINIMAL, qemuBinfmt={"enabled": True, "installPackages": False})
    with helm.Chart.load(chart) as c:
        ds = yaml.safe_load(c.render(values, name=RELEASE, namespace=NAMESPACE)[
            "archfarm/templates/qemu-binfmt-daemonset.yaml"])
    (out / "binfmt-register.sh").write_text(ds["spec"]["template"]["spec"]["initContainers"][0]["args"][0])
    # A static arm64 ELF: mov x0, #42; mov x8, #93 (exit); svc #0. It exits 42 only under QEMU.
    code = struct.pack("<3I", 0xD2800540, 0xD2800BA8, 0xD4000001)
    base, ehsize, phsize = 0x400000, 64, 56
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0xB7, 1, base + ehsize + phsize, ehsize, 0, 0, ehsize, phsize, 1, 0, 0, 0)
    size = ehsize + phsize + len(code)
    elf = out / "exit42-arm64"
    elf.write_bytes(header + struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000) + code)
    elf.chmod(0o755)


def expect_failure(name: str, action, must_mention: str) -> None:
    try:
        action()
    except Exception as e:  # the SDK raises HelmValuesError, HelmRenderError, ValidationError...
        text = str(e)
        if must_mention in text:
            # jsonschema's message is the first line of its text; Helm's error is on the last.
            line = getattr(e, "message", None) or text.strip().splitlines()[-1]
            refused.append(name)
            ok(f"refused as expected: {name}:\n         {line[:300]}")
        else:
            fail(f"{name}: failed, but without mentioning {must_mention!r}: {text[:300]}")
        return
    fail(f"{name}: was accepted, but must be refused")


def main() -> int:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    chart, here = root / "helm/archfarm", root / "helm/check"
    out.mkdir(parents=True, exist_ok=True)
    full = yaml.safe_load((chart / "ci/full-values.yaml").read_text())
    print(f"helm engine {helm.helm_sdk_version()} (helm-python-sdk), Kubernetes schemas {KUBE_VERSION}")
    totals = {}
    rendered = {}
    for name, values in (("default", MINIMAL), ("full", full)):
        print(f"\n[{name} values]")
        lint(chart, name, values)
        try:
            docs = render(chart, values)
        except Exception as e:
            fail(f"render {name}: {e}")
            continue
        rendered[name] = docs
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        kube, crd = validate(docs, here / "schemas")
        kinds = sorted({d["kind"] for d in docs})
        ok(f"rendered {len(docs)} manifests ({', '.join(kinds)}) -> {out / (name + '.yaml')}")
        ok(f"validated {kube} against Kubernetes {KUBE_VERSION} (strict) and {crd} custom resources "
           f"against the subset schemas in helm/check/schemas")
        check_references(docs)
        check_against_code(root, docs)
        if name == "full":
            check_keda_metric(root, docs)
        totals[name] = (len(docs), kube, crd)

    print("\n[QEMU DaemonSet]")
    write_binfmt_test_files(chart, out)
    run = subprocess.run(["bash", str(here / "binfmt-test.sh"), str(out)], capture_output=True, text=True)
    print(run.stdout + run.stderr, end="")
    binfmt = "skipped" if "  skip " in run.stdout else "passed" if run.returncode == 0 else "FAILED"
    if run.returncode != 0:
        fail("the QEMU registration script (helm/check/binfmt-test.sh)")

    print("\n[must fail]")
    typo = yaml.safe_load((here / "typo-values.yaml").read_text())
    with helm.Chart.load(chart) as c:
        expect_failure("a typo'd key (coordinator.replica)", lambda: c.render(typo, name=RELEASE, namespace=NAMESPACE), "replica")
        expect_failure("no database", lambda: c.render({}, name=RELEASE, namespace=NAMESPACE), "database.url")
        expect_failure("registry credentials over plain HTTP",
                       lambda: c.render(dict(MINIMAL, registryAuth={"existingSecret": "push"}), name=RELEASE,
                                        namespace=NAMESPACE), "insecureCredentialsOverHttp")
        expect_failure("an SQLite URL", lambda: c.render({"database": {"url": "sqlite:///data/a.db"}}, name=RELEASE,
                                                       namespace=NAMESPACE), "postgres://")
    typo_lint = helm.lint(chart, typo, strict=True, kube_version=f"v{KUBE_VERSION}")
    errors = [m["error"] for m in typo_lint.get("messages") or [] if m["severity"] >= 2]
    if errors:
        refused.append("helm lint of the typo")
        ok(f"refused as expected: helm lint --strict of the typo'd values:\n         {errors[0].splitlines()[-1][:200]}")
    else:
        fail("helm lint accepted the typo'd values")
    if "full" in rendered:
        # The validators themselves must not be pass-everything: break one field of each kind.
        deploy = copy.deepcopy(next(d for d in rendered["full"] if d["kind"] == "Deployment"))
        deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
        expect_failure("a Deployment with a misspelt field (strict Kubernetes schema)",
                       lambda: kubernetes_validate.validate(deploy, KUBE_VERSION, strict=True), "imagePullPolcy")
        so = copy.deepcopy(next(d for d in rendered["full"] if d["kind"] == "ScaledObject"))
        so["spec"]["triggers"][0]["metadata"]["threshold"] = 2
        expect_failure("a ScaledObject with a number as trigger metadata (subset schema)",
                       lambda: validate_custom(so, here / "schemas"), "not of type 'string'")

    print("\n== summary ==")
    for name, (n, kube, crd) in totals.items():
        print(f"{name}: {n} manifests rendered, {kube} validated against Kubernetes {KUBE_VERSION}, "
              f"{crd} custom resources against subset schemas")
    print(f"QEMU registration script: {binfmt}")
    print(f"must-fail checks: {len(refused)} refused as expected")
    if failures:
        print(f"{len(failures)} FAILED:")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("helm chart: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
