"""Command line: ``python -m devtools.deploycheck`` (also ``python -m deploy.check_compose``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from devtools.deploycheck.common import Report, rel
from devtools.deploycheck.compose import check_compose, check_copy_sources
from devtools.deploycheck.dockerfiles import check_hadolint, parse_dockerfile
from devtools.deploycheck.k8s import check_k8s
from devtools.deploycheck.readme import check_readme_tables, settings_table, write_settings_table

# ---------------------------------------------------------------------------------------------
# Entry point


def default_root() -> Path:
    cwd = Path.cwd()
    if (cwd / "docker-compose.yml").is_file():
        return cwd
    return Path(__file__).resolve().parents[2]


def run_checks(
    compose: Path,
    k8s_dir: Path | None,
    readme: Path | None,
    *,
    hadolint: bool = True,
    require_all: bool = False,
    kustomize_mode: str = "auto",
) -> Report:
    report = Report()
    root = compose.parent
    check_compose(compose, root, report)
    if readme is not None:
        check_readme_tables(readme, root, report)
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
        prog="python -m devtools.deploycheck",
        description="Validate docker-compose.yml, deploy/Dockerfile* and deploy/k8s without Docker or a cluster.",
    )
    ap.add_argument("--compose", type=Path, help="compose file (default: ./docker-compose.yml)")
    ap.add_argument("--k8s", type=Path, help="Kubernetes manifests folder (default: <compose dir>/deploy/k8s)")
    ap.add_argument(
        "--readme", type=Path, help="README with the settings tables (default: <compose dir>/deploy/README.md)"
    )
    ap.add_argument("--skip-k8s", action="store_true", help="do not check the Kubernetes manifests")
    ap.add_argument("--skip-hadolint", action="store_true", help="do not lint the Dockerfiles")
    ap.add_argument(
        "--require-all",
        action="store_true",
        help="fail when an optional validator (hadolint, kubernetes-validate) is missing",
    )
    ap.add_argument(
        "--kustomize",
        choices=("auto", "kubectl", "builtin"),
        default="auto",
        help="how to render kustomizations (default: kubectl/kustomize if found, else built-in)",
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    ap.add_argument(
        "--settings-table", action="store_true", help="print the settings table for deploy/README.md and exit"
    )
    ap.add_argument(
        "--write-readme",
        action="store_true",
        help="regenerate the settings table of deploy/README.md from streamer.settings and exit",
    )
    args = ap.parse_args(argv)
    if args.settings_table:
        print(settings_table())
        return 0
    if args.write_readme:
        write_settings_table((args.readme or default_root() / "deploy" / "README.md").resolve())
        return 0

    compose = (args.compose or default_root() / "docker-compose.yml").resolve()
    root = compose.parent
    k8s_dir = None if args.skip_k8s else (args.k8s or root / "deploy" / "k8s").resolve()
    readme = (args.readme or root / "deploy" / "README.md").resolve()
    report = run_checks(
        compose,
        k8s_dir,
        readme,
        hadolint=not args.skip_hadolint,
        require_all=args.require_all,
        kustomize_mode=args.kustomize,
    )
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
