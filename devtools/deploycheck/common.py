"""What the deploy checks know about the product (its settings, topics, ports), the report, strict YAML
loading and Compose variable interpolation: shared by the compose, Dockerfile and Kubernetes checks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from streamer.settings import SETTINGS_DOC  # the one declaration of the product's settings

# ---------------------------------------------------------------------------------------------
# What the product reads. Mirrors the tables in deploy/README.md (checked by check_readme_tables).


#: Product variables read outside streamer.settings (replay/retrain data, logging): name -> (default, meaning).
PRODUCT_ENV_VARS_OUTSIDE_SETTINGS_DOC: dict[str, tuple[str, str]] = {
    "STREAMREC_DATA_DIR": ("../shared/data", "where the data sets are (mounted read-only)"),
    "STREAMREC_LOG_LEVEL": ("INFO", "log level of the streamrec loggers"),
    "STREAMREC_FAUST_LOG_LEVEL": ("warn", "log level of faust itself"),
}
PRODUCT_ENV_VARS_OUTSIDE_SETTINGS: frozenset[str] = frozenset(PRODUCT_ENV_VARS_OUTSIDE_SETTINGS_DOC)

#: Every variable the streamrec processes read: the settings declared in streamer.settings (one
#: declaration: a new setting is known here, in the README tables and in the deploy checks at once)
#: plus PRODUCT_ENV_VARS_OUTSIDE_SETTINGS. Name -> (default: None = required, meaning).
PRODUCT_ENV_VARS: dict[str, tuple[str | None, str]] = {
    **{var: (default, doc) for var, default, _parse, doc in SETTINGS_DOC.values()},
    **PRODUCT_ENV_VARS_OUTSIDE_SETTINGS_DOC,
}

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
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1} (first at line {seen[key].line + 1})"
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


def interpolate_tree(
    node: Any, env: Mapping[str, str], uses: list[VarUse], path: tuple, report: Report, fname: str
) -> Any:
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
