"""devtools.deploycheck.compose and .readme on the real docker-compose.yml (must pass) and on broken copies
(must fail with a precise message). No Docker engine: everything is checked offline."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.unit.deploy.helpers import FAST, REPO, cc, edit, run

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
    edit(
        tree / "docker-compose.yml",
        "      bootstrap-model:\n        condition: service_completed_successfully",
        "      bootstrap-modle:\n        condition: service_completed_successfully",
    )
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "services.worker.depends_on: 'bootstrap-modle' is not a service" in out


def test_unknown_env_var(tree, capsys):
    edit(
        tree / "docker-compose.yml",
        "      STREAMREC_STATE_DIR: /var/lib/streamrec/state",
        "      STREAMREC_STATE_DIR: /var/lib/streamrec/state\n      STREAMREC_MODEL_DIR: /models",
    )
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "services.worker.environment: STREAMREC_MODEL_DIR is not a setting the product reads" in out
    assert "did you mean" in out


def test_bad_schema_key(tree, capsys):
    edit(
        tree / "docker-compose.yml",
        "    image: redis:7.4.2-alpine",
        "    image: redis:7.4.2-alpine\n    restartt: always",
    )
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
    edit(
        tree / "docker-compose.yml",
        "      bootstrap-model:\n        condition: service_completed_successfully",
        "      retrain:\n        condition: service_completed_successfully",
    )
    edit(tree / "docker-compose.yml", "    profiles: [replay]", "    profiles: [replays]")
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "'retrain' only starts with profile(s) ['retrain'], but 'worker' does not share one" in out
    assert "services.replay.profiles: unknown profile 'replays'" in out


def test_one_shot_and_cycle(tree, capsys):
    edit(
        tree / "docker-compose.yml",
        '    restart: "no"\n    networks: [backend]\n\n  redis:',
        "    restart: always\n    networks: [backend]\n\n  redis:",
    )
    edit(
        tree / "docker-compose.yml",
        "    image: apache/kafka:3.9.1\n    hostname: kafka\n",
        "    image: apache/kafka:3.9.1\n    hostname: kafka\n    depends_on: [worker]\n",
    )
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "condition service_completed_successfully, but 'topics' has restart: always" in out
    assert "dependency cycle:" in out


def test_replicas_and_ports(tree, capsys):
    edit(tree / "docker-compose.yml", "      replicas: 2", "      replicas: 12")
    edit(
        tree / "docker-compose.yml",
        "    expose:\n",
        '    ports:\n      - "9108:9108"\n      - "8080:8080"\n    expose:\n',
    )
    rc, out = run(tree / "docker-compose.yml", *FAST, capsys=capsys)
    assert rc == 1
    assert "12 workers for 8 partitions" in out
    assert "12 replicas cannot share one fixed host port" in out
    assert "publishes container port 8080" in out


def test_topics_service(tree, capsys):
    edit(
        tree / "docker-compose.yml",
        "for topic in events items recommendations events.dlq model-updates;",
        "for topic in events items recommendations model-updates;",
    )
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
