"""docker-compose.yml: Compose Specification schema, variables, references, product environment,
builds, health and shape."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from devtools.deploycheck.common import (
    ALLOWED_PUBLISHED_PORTS,
    COMPOSE_SCHEMA_PACKAGE,
    COMPOSE_SCHEMA_RELPATH,
    COMPOSE_SCHEMA_SHA_RELPATH,
    COMPOSE_VARS,
    DEFAULT_PARTITIONS,
    KNOWN_PROFILES,
    KNOWN_TOPICS,
    OWN_IMAGE_PREFIXES,
    PRODUCT_ENV_VARS,
    REQUIRED_COMPOSE_VARS,
    REQUIRED_HEALTHCHECKS,
    RUNTIME_ENV_VARS,
    TOPICS_SERVICE,
    WORKER_SERVICE,
    Report,
    VarUse,
    dotted,
    interpolate_tree,
    load_yaml,
    rel,
)
from devtools.deploycheck.dockerfiles import Dockerfile, Stage, dockerignored, load_dockerignore, parse_dockerfile

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
                cyc = stack[stack.index(dep) :] + [dep] if dep in stack else [node, dep]
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
                    f"{var} is not a setting the product reads{hint}; known: {', '.join(sorted(PRODUCT_ENV_VARS))}",
                )


def check_builds(
    services: dict[str, dict], base: Path, root: Path, fname: str, report: Report
) -> dict[str, tuple[Dockerfile, str | None]]:
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


def check_health_and_shape(
    services: dict[str, dict], dockerfiles: dict[str, tuple[Dockerfile, str | None]], fname: str, report: Report
) -> None:
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
            if (
                hc is None
                or hc == "NONE"
                or (isinstance(tgt.get("healthcheck"), dict) and tgt["healthcheck"].get("disable"))
            ):
                report.error(f"{where}.depends_on.{dep}", f"condition service_healthy, but {dep!r} has no healthcheck")

        replicas = _int((svc.get("deploy") or {}).get("replicas", svc.get("scale", 1)))
        if replicas and replicas > 1:
            if "container_name" in svc:
                report.error(
                    f"{where}.container_name", f"a service with {replicas} replicas cannot have a container_name"
                )
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
