"""deploy/README.md tables: the settings table is generated from streamer.settings (the one
declaration) and must be current; the compose variables table mirrors COMPOSE_VARS."""

from __future__ import annotations

import re
from pathlib import Path

from devtools.deploycheck.common import COMPOSE_VARS, PRODUCT_ENV_VARS, README_TABLES, Report, rel

# ---------------------------------------------------------------------------------------------
# README tables


def _block(readme: Path, table: str) -> str | None:
    start, end = README_TABLES[table]
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def write_settings_table(readme: Path) -> None:
    """Regenerate the settings table of ``readme`` (deploy/README.md) from streamer.settings."""
    start, end = README_TABLES["settings"]
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(start, 1)
    _old, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{settings_table()}\n{end}{tail}", encoding="utf-8")


def readme_table_names(readme: Path, table: str) -> set[str] | None:
    block = _block(readme, table)
    if block is None:
        return None
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
        known = "streamer.settings" if table == "settings" else "devtools/deploycheck/common.py"
        for n in sorted(expected - names):
            report.error(rname, f"{table} table lacks `{n}` (declared in {known})")
        for n in sorted(names - expected):
            report.error(rname, f"{table} table lists `{n}`, which {known} does not declare")
        if table == "settings" and names == expected and _block(readme, table) != settings_table():
            report.error(
                rname,
                "settings table is stale (defaults or meanings differ from streamer.settings): "
                "run `python -m devtools.deploycheck --write-readme`",
            )


def settings_table() -> str:
    """The deploy/README.md settings table, from PRODUCT_ENV_VARS (streamer.settings' declaration)."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for var, (default, doc) in PRODUCT_ENV_VARS.items():
        shown = "(required)" if default is None else f"`{default}`" if default else "(empty)"
        rows.append(f"| `{var}` | {shown} | {doc} |")
    return "\n".join(rows)
