"""The model registry on disk: versioned folders, written atomically, and the ``LATEST`` pointer.

A worker may look at ``<root>`` at any moment, so nothing it can see is ever half-written:

1. a version is assembled in ``<root>/<version>.tmp-XXXX`` (invisible to workers: not a
   version name, never in ``LATEST``);
2. ``commit`` writes ``manifest.json`` with the sha256 and size of every other file, fsyncs the
   files and the folder, and renames the folder to ``<root>/<version>`` (atomic on POSIX; it
   fails instead of merging when the version already exists);
3. only then, and only if asked (the retrain gate may keep a version unpublished), ``LATEST`` is
   replaced atomically (temp file, fsync, ``os.replace``, fsync of the folder).

Any exception before the rename removes the temporary folder and leaves ``LATEST`` as it was.

``<root>/runs.jsonl`` records every run of the retrain job, one JSON object a line (version,
window, event counts, metrics, gate decision, wall time; or the refusal and its reason): each
line is appended with one ``write`` on an ``O_APPEND`` descriptor and fsynced before the job
reports success, so a crash leaves at most a torn last line, which ``read_runs`` skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from schemas.models import validate_manifest

LATEST = "LATEST"
RUNS = "runs.jsonl"
MANIFEST = "manifest.json"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_version_name(kind: str, now: datetime | None = None) -> str:
    """``<UTC timestamp>-<kind>``: sorts by creation time, readable in ``ls``."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{kind}"


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_version_name(version: str) -> str:
    if not _VERSION_RE.match(version) or ".tmp-" in version or version == LATEST:
        raise ValueError(f"invalid version name {version!r}")
    return version


class StagedVersion:
    """A version being assembled; use as a context manager and call ``commit`` inside it.

    Leaving the block without a commit (an exception, or simply no commit) discards the folder.
    """

    def __init__(self, root: Path, version: str):
        self.root = Path(root)
        self.version = check_version_name(version)
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.root / version).exists():
            raise FileExistsError(f"version {version} already exists in {self.root}")
        self.path = Path(tempfile.mkdtemp(prefix=f"{version}.tmp-", dir=self.root))
        self.path.chmod(0o755)  # mkdtemp makes it private; workers may run as another user
        self.final: Path | None = None

    def __enter__(self) -> "StagedVersion":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.final is None:
            self.abort()

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, manifest: dict[str, Any], publish: bool = True) -> Path:
        """Checksum, fsync and rename into place; then point ``LATEST`` at it when ``publish``."""
        files = {}
        for p in sorted(self.path.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                files[p.relative_to(self.path).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                _fsync_file(p)
        manifest = dict(manifest, version=self.version, files=files)
        validate_manifest(manifest)  # a worker must never see a manifest it would refuse
        manifest_path = self.path / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False) + "\n")
        _fsync_file(manifest_path)
        _fsync_dir(self.path)
        final = self.root / self.version
        os.rename(self.path, final)
        _fsync_dir(self.root)
        self.final = final
        if publish:
            set_latest(self.root, self.version)
        return final


def set_latest(root: Path, version: str) -> None:
    """Atomically point ``<root>/LATEST`` at an existing, committed version."""
    root = Path(root)
    check_version_name(version)
    if not (root / version / MANIFEST).is_file():
        raise FileNotFoundError(f"no committed version {version} in {root}")
    fd, tmp = tempfile.mkstemp(prefix=f"{LATEST}.tmp-", dir=root)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / LATEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(root)


def read_latest(root: Path) -> str | None:
    """The published version name, or None when nothing was published yet."""
    try:
        name = (Path(root) / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    return name or None


def load_manifest(version_dir: Path) -> dict[str, Any]:
    return json.loads((Path(version_dir) / MANIFEST).read_text())


def verify_version(version_dir: Path) -> list[str]:
    """Problems found when checking every file against the manifest (empty list: intact)."""
    version_dir = Path(version_dir)
    try:
        manifest = load_manifest(version_dir)
    except (OSError, ValueError) as e:
        return [f"manifest unreadable: {e}"]
    problems = []
    for name, meta in manifest.get("files", {}).items():
        p = version_dir / name
        if not p.is_file():
            problems.append(f"{name}: missing")
        elif p.stat().st_size != meta["bytes"]:
            problems.append(f"{name}: {p.stat().st_size} bytes, manifest says {meta['bytes']}")
        elif sha256_file(p) != meta["sha256"]:
            problems.append(f"{name}: sha256 mismatch")
    return problems


def append_run(root: Path, record: dict[str, Any]) -> None:
    """Append one run record to ``<root>/runs.jsonl``, durably (see the module docstring)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / RUNS
    created = not path.exists()
    line = (json.dumps(record, sort_keys=False, allow_nan=False, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(root)


def read_runs(root: Path) -> list[dict[str, Any]]:
    """Every complete run record, oldest first (a torn last line is skipped)."""
    try:
        lines = (Path(root) / RUNS).read_text().splitlines()
    except FileNotFoundError:
        return []
    runs = []
    for line in lines:
        try:
            runs.append(json.loads(line))
        except ValueError:
            continue
    return runs


def last_trained_run(root: Path) -> dict[str, Any] | None:
    """The latest run that wrote a version (published or not)."""
    return next((r for r in reversed(read_runs(root)) if r.get("version")), None)
