"""deploy/k8s: documents, kustomize rendering (kubectl/kustomize or a built-in renderer), OpenAPI
validation with kubernetes-validate, cross references."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import yaml

from devtools.deploycheck.common import (
    DEFAULT_METRICS_PORT,
    K8S_SCHEMA_VERSION,
    OWN_IMAGE_PREFIXES,
    PRODUCT_ENV_VARS,
    RUNTIME_ENV_VARS,
    WORKLOAD_KINDS,
    Report,
    dotted,
    load_yaml,
    load_yaml_all,
    rel,
)
from devtools.deploycheck.compose import _int
from devtools.deploycheck.dockerfiles import find_tool

# ---------------------------------------------------------------------------------------------
# Kubernetes


@dataclass
class K8sDoc:
    data: dict
    source: str

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.data.get("metadata") or {}).get("name", ""))

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"


def _deep_merge(base: Any, patch: Any) -> Any:
    """Strategic-merge subset: maps merge, lists of named maps merge by name, other lists replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _deep_merge(out[k], v)
            else:
                out[k] = v
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and patch
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = list(base)
        for item in patch:
            idx = next((i for i, b in enumerate(out) if b["name"] == item["name"]), None)
            if idx is None:
                out.append(item)
            else:
                out[idx] = _deep_merge(out[idx], item)
        return out
    return patch


def _pod_templates(doc: dict) -> list[tuple[dict, tuple]]:
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return [(doc, ())]
    if kind == "CronJob":
        return [
            (
                ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {},
                ("spec", "jobTemplate", "spec", "template"),
            )
        ]
    if kind in WORKLOAD_KINDS:
        return [(spec.get("template") or {}, ("spec", "template"))]
    return []


def _containers(pod: dict) -> list[dict]:
    spec = pod.get("spec") or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def _apply_images(doc: dict, images: list[dict]) -> None:
    for pod, _ in _pod_templates(doc):
        for c in _containers(pod):
            img = str(c.get("image", ""))
            m = re.match(r"^(?P<name>[^@:]+(?::\d+/[^@:]+)?)(?::(?P<tag>[^@]+))?(?:@(?P<digest>.+))?$", img)
            if not m:
                continue
            for rule in images:
                if rule.get("name") != m.group("name"):
                    continue
                name = rule.get("newName", m.group("name"))
                if rule.get("digest"):
                    c["image"] = f"{name}@{rule['digest']}"
                elif rule.get("newTag"):
                    c["image"] = f"{name}:{rule['newTag']}"
                else:
                    tail = f":{m.group('tag')}" if m.group("tag") else ""
                    c["image"] = f"{name}{tail}"


_BUILTIN_KUSTOMIZE_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "patches",
    "commonLabels",
}


def render_kustomization_builtin(kdir: Path, root: Path, report: Report, depth: int = 0) -> list[K8sDoc] | None:
    kfile = kdir / "kustomization.yaml"
    if not kfile.is_file():
        kfile = kdir / "kustomization.yml"
    where = rel(kfile, root)
    try:
        kust = load_yaml(kfile.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        report.error(where, f"cannot read: {exc}")
        return None
    unknown = set(kust) - _BUILTIN_KUSTOMIZE_FIELDS
    if unknown:
        report.error(where, f"the built-in renderer does not support {sorted(unknown)}; install kubectl or kustomize")
        return None
    docs: list[K8sDoc] = []
    for res in kust.get("resources") or []:
        path = (kdir / res).resolve()
        if path.is_dir():
            if depth > 10:
                report.error(where, "kustomization nesting too deep")
                return None
            sub = render_kustomization_builtin(path, root, report, depth + 1)
            if sub is None:
                return None
            docs += sub
        elif path.is_file():
            for d in load_yaml_all(path.read_text(encoding="utf-8")):
                if d:
                    docs.append(K8sDoc(d, rel(path, root)))
        else:
            report.error(where, f"resource {res!r} does not exist")
            return None
    for p in kust.get("patches") or []:
        if "path" not in p:
            report.error(where, f"the built-in renderer supports only file patches, not {p}")
            return None
        ppath = kdir / p["path"]
        if not ppath.is_file():
            report.error(where, f"patch {p['path']!r} does not exist")
            return None
        for patch in load_yaml_all(ppath.read_text(encoding="utf-8")):
            if not patch:
                continue
            tgt = p.get("target") or {}
            kind = tgt.get("kind", patch.get("kind"))
            name = tgt.get("name", (patch.get("metadata") or {}).get("name"))
            hit = [d for d in docs if d.kind == kind and d.name == name]
            if not hit:
                report.error(where, f"patch {p['path']!r} targets {kind}/{name}, which is not a resource here")
                return None
            for d in hit:
                d.data = _deep_merge(d.data, patch)
    ns = kust.get("namespace")
    labels: dict[str, str] = {}
    for entry in kust.get("labels") or []:
        labels.update(entry.get("pairs") or {})
    labels.update(kust.get("commonLabels") or {})
    for d in docs:
        md = d.data.setdefault("metadata", {})
        if ns and d.kind != "Namespace":
            md["namespace"] = ns
        if labels:
            md["labels"] = {**(md.get("labels") or {}), **labels}
        _apply_images(d.data, kust.get("images") or [])
    return docs


def render_kustomization(kdir: Path, root: Path, report: Report, mode: str) -> tuple[list[K8sDoc] | None, str]:
    tool: list[str] | None = None
    if mode in ("auto", "kubectl"):
        exe = find_tool("kubectl")
        if exe:
            tool = [exe, "kustomize"]
        elif find_tool("kustomize"):
            tool = [str(find_tool("kustomize")), "build"]
        elif mode == "kubectl":
            report.error(rel(kdir, root), "neither kubectl nor kustomize is installed")
            return None, "none"
    if tool is None:
        docs = render_kustomization_builtin(kdir, root, report)
        if docs is None:
            return None, "built-in renderer"
        return [K8sDoc(d.data, f"{rel(kdir, root)} (rendered)") for d in docs], "built-in renderer"
    try:
        proc = subprocess.run([*tool, str(kdir)], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        report.error(rel(kdir, root), f"{' '.join(tool)} failed: {exc}")
        return None, " ".join(tool)
    if proc.returncode != 0:
        report.error(rel(kdir, root), f"{' '.join(tool[:2])} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return None, " ".join(tool)
    src = f"{rel(kdir, root)} (rendered)"
    return [K8sDoc(d, src) for d in load_yaml_all(proc.stdout) if d], " ".join(Path(tool[0]).name.split() + tool[1:])


def _k8s_validate(docs: Sequence[K8sDoc], report: Report, require: bool) -> bool:
    try:
        from kubernetes_validate import utils as kv
    except ImportError:
        msg = "kubernetes-validate not installed (pip install kubernetes-validate): schema check skipped"
        (report.error if require else report.warn)("deploy/k8s", msg)
        return False
    for d in docs:
        try:
            kv.validate(d.data, K8S_SCHEMA_VERSION, strict=True)
        except kv.ValidationError as exc:
            path = dotted(exc.path)
            report.error(f"{d.source}: {d.label}: {path}", f"Kubernetes {K8S_SCHEMA_VERSION} schema: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            report.error(f"{d.source}: {d.label}", exc.message)
        except Exception as exc:  # noqa: BLE001 (report, do not crash)
            report.error(f"{d.source}: {d.label}", f"could not be validated: {exc}")
    return True


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_k8s_set(docs: list[K8sDoc], extra: list[K8sDoc], setname: str, report: Report) -> None:
    """Cross-reference checks over one rendered set (plus *.example.yaml objects)."""
    by_kind: dict[str, dict[str, K8sDoc]] = {}
    for d in docs + extra:
        by_kind.setdefault(d.kind, {})[d.name] = d
    cms = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    pvcs = by_kind.get("PersistentVolumeClaim", {})
    sas = by_kind.get("ServiceAccount", {})
    services = by_kind.get("Service", {})
    workloads = [d for d in docs if d.kind in WORKLOAD_KINDS]
    pvc_users: dict[str, list[tuple[K8sDoc, bool]]] = {}
    partitions: int | None = None
    for cm in cms.values():
        v = _int(((cm.data.get("data") or {}).get("STREAMREC_PARTITIONS")))
        if v:
            partitions = v

    for d in workloads:
        where = f"{setname}: {d.label}"
        for pod, _ppath in _pod_templates(d.data):
            spec = pod.get("spec") or {}
            labels = (pod.get("metadata") or {}).get("labels") or {}
            sel = ((d.data.get("spec") or {}).get("selector") or {}).get("matchLabels")
            if d.kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet") and not _matches(sel or {}, labels):
                report.error(where, f"spec.selector.matchLabels {sel} does not match the pod labels {labels}")
            sa = spec.get("serviceAccountName")
            if sa and sa != "default" and sa not in sas:
                report.error(where, f"serviceAccountName {sa!r}: no such ServiceAccount")
            claim_names = {}
            for vol in spec.get("volumes") or []:
                pvc = vol.get("persistentVolumeClaim")
                if pvc:
                    claim_names[vol.get("name")] = pvc.get("claimName")
                    if pvc.get("claimName") not in pvcs:
                        report.error(
                            where, f"volume {vol.get('name')!r}: no PersistentVolumeClaim {pvc.get('claimName')!r}"
                        )
                for src_key, pool, kind in (("configMap", cms, "ConfigMap"), ("secret", secrets, "Secret")):
                    src = vol.get(src_key)
                    if src:
                        ref = src.get("name") or src.get("secretName")
                        if ref not in pool and not src.get("optional"):
                            report.error(where, f"volume {vol.get('name')!r}: no {kind} {ref!r}")
            for c in _containers(pod):
                cw = f"{where}: container {c.get('name')}"
                own = str(c.get("image", "")).startswith(OWN_IMAGE_PREFIXES)
                for ef in c.get("envFrom") or []:
                    for key, pool, kind in (("configMapRef", cms, "ConfigMap"), ("secretRef", secrets, "Secret")):
                        ref = ef.get(key)
                        if not ref:
                            continue
                        if ref.get("name") not in pool:
                            if not ref.get("optional"):
                                report.error(cw, f"envFrom {kind} {ref.get('name')!r} does not exist")
                            continue
                        if own:
                            obj = pool[ref["name"]].data
                            keys = set((obj.get("data") or {})) | set((obj.get("stringData") or {}))
                            for k in sorted(keys - set(PRODUCT_ENV_VARS) - RUNTIME_ENV_VARS):
                                report.error(
                                    cw, f"{kind} {ref['name']!r} sets {k}, which is not a setting the product reads"
                                )
                for e in c.get("env") or []:
                    if own and e.get("name") not in PRODUCT_ENV_VARS and e.get("name") not in RUNTIME_ENV_VARS:
                        report.error(cw, f"env {e.get('name')} is not a setting the product reads")
                    vf = e.get("valueFrom") or {}
                    for key, pool, kind in (("configMapKeyRef", cms, "ConfigMap"), ("secretKeyRef", secrets, "Secret")):
                        ref = vf.get(key)
                        if ref and ref.get("name") not in pool and not ref.get("optional"):
                            report.error(cw, f"env {e.get('name')}: no {kind} {ref.get('name')!r}")
                for m in c.get("volumeMounts") or []:
                    claim = claim_names.get(m.get("name"))
                    if claim:
                        pvc_users.setdefault(claim, []).append((d, not m.get("readOnly", False)))
                if own:
                    res = c.get("resources") or {}
                    for part in ("requests", "limits"):
                        if not res.get(part):
                            report.error(cw, f"resources.{part} missing")
                    if "streamrec/worker" in str(c.get("image")) and d.kind in ("StatefulSet", "Deployment"):
                        check_worker_probes(c, cw, cms, report)
        # StatefulSet governing service
        if d.kind == "StatefulSet":
            svc_name = (d.data.get("spec") or {}).get("serviceName")
            svc = services.get(svc_name)
            if svc is None:
                report.error(where, f"serviceName {svc_name!r}: no such Service")
            else:
                sspec = svc.data.get("spec") or {}
                if sspec.get("clusterIP") != "None":
                    report.error(
                        f"{setname}: {svc.label}",
                        "governing Service of a StatefulSet must be headless (clusterIP: None)",
                    )
                pod_labels = (((d.data.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
                    "labels"
                ) or {}
                if not _matches(sspec.get("selector") or {}, pod_labels):
                    report.error(f"{setname}: {svc.label}", f"selector does not match the pods of {d.label}")

    for claim, users in pvc_users.items():
        pvc = pvcs.get(claim)
        if pvc is None:
            continue
        modes = set(((pvc.data.get("spec") or {}).get("accessModes")) or [])
        writers = {u.label for u, w in users if w}
        readers = {u.label for u, w in users}
        if writers and len(readers) > 1 and "ReadWriteMany" not in modes:
            report.error(
                f"{setname}: {pvc.label}",
                f"written by {sorted(writers)} and mounted by {sorted(readers)}: needs accessModes ReadWriteMany",
            )

    pod_label_sets = [
        ((((w.data.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {})
        for w in workloads
    ]
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        sel = ((pdb.data.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not any(_matches(sel, labels) for labels in pod_label_sets):
            report.error(f"{setname}: {pdb.label}", f"selector {sel} matches no workload's pods")
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        spec = hpa.data.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        target = by_kind.get(str(ref.get("kind")), {}).get(str(ref.get("name")))
        if target is None or target not in docs:
            report.error(
                f"{setname}: {hpa.label}", f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} does not exist"
            )
        max_r = _int(spec.get("maxReplicas"))
        if partitions and max_r and max_r > partitions:
            report.error(
                f"{setname}: {hpa.label}",
                f"maxReplicas {max_r} > STREAMREC_PARTITIONS {partitions}: workers beyond the partition count idle",
            )


def check_worker_probes(c: dict, where: str, cms: Mapping[str, K8sDoc], report: Report) -> None:
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    metrics_port = DEFAULT_METRICS_PORT
    for cm in cms.values():
        v = _int((cm.data.get("data") or {}).get("STREAMREC_METRICS_PORT"))
        if v:
            metrics_port = v
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        pr = c.get(probe)
        hg = (pr or {}).get("httpGet")
        if not hg:
            report.error(where, f"{probe} must be an httpGet on {path}")
            continue
        if hg.get("path") != path:
            report.error(where, f"{probe} path is {hg.get('path')!r}, expected {path!r}")
        port = hg.get("port")
        port_num = ports.get(port) if isinstance(port, str) else port
        if port_num != metrics_port:
            report.error(where, f"{probe} port {port!r} is not the metrics port {metrics_port}")


def check_k8s(k8s_dir: Path, root: Path, report: Report, require: bool, kustomize_mode: str) -> None:
    kname = rel(k8s_dir, root)
    if not k8s_dir.is_dir():
        report.error(kname, "does not exist")
        return
    files = sorted(p for p in k8s_dir.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        report.error(kname, "no YAML manifests")
        return
    plain: list[K8sDoc] = []
    examples: list[K8sDoc] = []
    patch_files: set[Path] = set()
    kust_dirs: list[Path] = []
    for f in files:
        fname = rel(f, root)
        try:
            docs = load_yaml_all(f.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            report.error(fname, f"not valid YAML: {exc}")
            continue
        for i, d in enumerate(docs):
            if d is None:
                continue
            where = f"{fname}: document {i + 1}"
            if not isinstance(d, dict):
                report.error(where, "is not a mapping")
                continue
            for key in ("apiVersion", "kind"):
                if not d.get(key):
                    report.error(where, f"{key} missing")
            if d.get("kind") == "Kustomization":
                kust_dirs.append(f.parent)
                for p in d.get("patches") or []:
                    if isinstance(p, dict) and "path" in p:
                        patch_files.add((f.parent / p["path"]).resolve())
                for res in d.get("resources") or []:
                    if not (f.parent / res).exists():
                        report.error(fname, f"resource {res!r} does not exist")
                continue
            if not (d.get("metadata") or {}).get("name"):
                report.error(where, "metadata.name missing")
                continue
            doc = K8sDoc(d, fname)
            (examples if f.name.endswith((".example.yaml", ".example.yml")) else plain).append(doc)
    plain = [d for d in plain if Path(root / d.source).resolve() not in patch_files]
    to_validate = plain + examples
    rendered_sets: list[tuple[str, list[K8sDoc]]] = []
    for kdir in kust_dirs:
        docs, how = render_kustomization(kdir, root, report, kustomize_mode)
        if docs is None:
            continue
        report.note(f"{rel(kdir, root)} renders with {how}: {len(docs)} resources")
        rendered_sets.append((rel(kdir, root), docs))
        to_validate += [d for d in docs if d.source.endswith("(rendered)")]
    if _k8s_validate(to_validate, report, require):
        report.note(
            f"{len(to_validate)} Kubernetes objects checked against the Kubernetes "
            f"{K8S_SCHEMA_VERSION} schemas (kubernetes-validate, strict)"
        )
    if not rendered_sets:
        rendered_sets.append((kname, plain))
    for setname, docs in rendered_sets:
        check_k8s_set(docs, examples, setname, report)
        if PurePosixPath(setname).name == "gpu":
            gpu = [
                c
                for d in docs
                for pod, _ in _pod_templates(d.data)
                for c in _containers(pod)
                if ((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu")
                and "worker" in str(c.get("image"))
            ]
            if not gpu:
                report.error(setname, "the gpu overlay gives no worker container a nvidia.com/gpu limit")
