"""devtools.deploycheck.k8s on the real manifests (must pass) and on broken copies (must fail precisely)."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.unit.deploy.helpers import HAS_K8S_SCHEMAS, HAS_KUBECTL, REPO, cc, edit, run

# --------------------------------------------------------------------------- Kubernetes


def test_k8s_broken_hpa_and_refs(tree, capsys):
    k8s = tree / "deploy" / "k8s" / "base"
    edit(k8s / "worker-hpa.yaml", "  maxReplicas: 8", "  maxReplicas: 16")
    edit(
        k8s / "worker-statefulset.yaml",
        "            claimName: streamrec-models",
        "            claimName: streamrec-model",
    )
    edit(k8s / "worker-pdb.yaml", "app.kubernetes.io/name: streamrec-worker", "app.kubernetes.io/name: worker")
    edit(k8s / "configmap.yaml", '  STREAMREC_LOG_LEVEL: "INFO"', '  STREAMREC_LOGLEVEL: "INFO"')
    rc, out = run(tree / "docker-compose.yml", "--skip-hadolint", "--kustomize", "builtin", capsys=capsys)
    assert rc == 1
    assert "maxReplicas 16 > STREAMREC_PARTITIONS 8" in out
    assert "no PersistentVolumeClaim 'streamrec-model'" in out
    assert "PodDisruptionBudget/streamrec-worker: selector" in out
    assert "sets STREAMREC_LOGLEVEL, which is not a setting the product reads" in out


def test_k8s_probes_and_missing_secret(tree, capsys):
    sts = tree / "deploy" / "k8s" / "base" / "worker-statefulset.yaml"
    edit(sts, "              path: /readyz", "              path: /ready")
    (tree / "deploy" / "k8s" / "base" / "secret.example.yaml").unlink()
    rc, out = run(tree / "docker-compose.yml", "--skip-hadolint", "--kustomize", "builtin", capsys=capsys)
    assert rc == 1
    assert "readinessProbe path is '/ready', expected '/readyz'" in out
    assert "envFrom Secret 'streamrec-secrets' does not exist" in out


@pytest.mark.skipif(not HAS_K8S_SCHEMAS, reason="kubernetes-validate not installed")
def test_k8s_schema_error(tree, capsys):
    sts = tree / "deploy" / "k8s" / "base" / "worker-statefulset.yaml"
    edit(sts, "          imagePullPolicy: IfNotPresent", "          imagePullPolicyy: IfNotPresent")
    edit(tree / "deploy" / "k8s" / "base" / "worker-pdb.yaml", "  maxUnavailable: 1", "  maxUnavailable: [1]")
    rc, out = run(tree / "docker-compose.yml", "--skip-hadolint", "--kustomize", "builtin", capsys=capsys)
    assert rc == 1
    assert "StatefulSet/streamrec-worker: spec.template.spec.containers[0]: Kubernetes 1.30 schema:" in out
    assert "'imagePullPolicyy' was unexpected" in out
    assert "PodDisruptionBudget/streamrec-worker: spec.maxUnavailable: Kubernetes 1.30 schema" in out


def test_k8s_missing_fields_and_gpu_overlay(tree, capsys):
    (tree / "deploy" / "k8s" / "base" / "extra.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n")
    edit(tree / "deploy" / "k8s" / "overlays" / "gpu" / "worker-gpu.yaml", "              nvidia.com/gpu: 1\n", "")
    rc, out = run(tree / "docker-compose.yml", "--skip-hadolint", "--kustomize", "builtin", capsys=capsys)
    assert rc == 1
    assert "deploy/k8s/base/extra.yaml: document 1: metadata.name missing" in out
    assert "deploy/k8s/overlays/gpu: the gpu overlay gives no worker container a nvidia.com/gpu limit" in out


def test_k8s_manifest_shape():
    docs = {}
    for f in (REPO / "deploy" / "k8s" / "base").glob("*.yaml"):
        for d in yaml.safe_load_all(f.read_text()):
            docs[(d["kind"], d.get("metadata", {}).get("name"))] = d
    sts = docs[("StatefulSet", "streamrec-worker")]
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert sts["spec"]["volumeClaimTemplates"]
    assert docs[("PersistentVolumeClaim", "streamrec-models")]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert ("CronJob", "streamrec-retrain") in docs and ("PodDisruptionBudget", "streamrec-worker") in docs
    assert ("HorizontalPodAutoscaler", "streamrec-worker") in docs


@pytest.mark.skipif(not HAS_KUBECTL, reason="neither kubectl nor kustomize installed")
@pytest.mark.parametrize("kdir", ["deploy/k8s/base", "deploy/k8s/overlays/gpu"])
def test_builtin_renderer_matches_kustomize(kdir):
    exe = cc.find_tool("kubectl")
    cmd = [exe, "kustomize", kdir] if exe else [cc.find_tool("kustomize"), "build", kdir]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    report = cc.Report()
    mine = {(d.kind, d.name): d.data for d in cc.render_kustomization_builtin(REPO / kdir, REPO, report)}
    assert not report.errors
    assert mine == theirs
