"""The registry: checksummed manifests, atomic versions, LATEST only moves on success."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from exporters import bootstrap, export, registry
from schemas.models import validate_manifest

MINIMAL = {
    "format": 1,
    "created_at": "2024-01-01T00:00:00Z",
    "base_model": "test",
    "dim": 4,
    "max_seq_len": 3,
    "max_text_len": 8,
    "features": ["f"],
    "event_type_ids": {"view": 1},
    "ranker_variants": ["fp32"],
}


def _stage(root: Path, version: str, publish: bool = True) -> Path:
    with registry.StagedVersion(root, version) as staged:
        (staged.path / "ranker.onnx").write_bytes(os.urandom(100))
        return staged.commit(dict(MINIMAL), publish=publish)


def test_manifest_checksums_match_files(tiny_version: Path) -> None:
    manifest = registry.load_manifest(tiny_version)
    validate_manifest(manifest)
    on_disk = {p.name for p in tiny_version.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for name, meta in manifest["files"].items():
        assert registry.sha256_file(tiny_version / name) == meta["sha256"]
        assert (tiny_version / name).stat().st_size == meta["bytes"]
    assert registry.verify_version(tiny_version) == []
    assert registry.read_latest(tiny_version.parent) == tiny_version.name
    assert manifest["parity"]["ok"] and "fp32" in manifest["ranker_variants"]
    for variant in manifest["ranker_variants"]:
        assert manifest["ranker_variant_files"][variant] in manifest["files"]


def test_verify_detects_tampering(tmp_path: Path) -> None:
    folder = _stage(tmp_path, "v1")
    assert registry.verify_version(folder) == []
    with open(folder / "ranker.onnx", "r+b") as f:
        f.write(b"X")
    assert registry.verify_version(folder) == ["ranker.onnx: sha256 mismatch"]
    (folder / "ranker.onnx").unlink()
    assert registry.verify_version(folder) == ["ranker.onnx: missing"]


def test_exception_while_staging_leaves_nothing(tmp_path: Path) -> None:
    _stage(tmp_path, "v1")
    with pytest.raises(RuntimeError):
        with registry.StagedVersion(tmp_path, "v2") as staged:
            (staged.path / "ranker.onnx").write_bytes(b"partial")
            raise RuntimeError("export crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "v1"]
    assert registry.read_latest(tmp_path) == "v1"


def test_failed_rename_keeps_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stage(tmp_path, "v1")

    def broken_rename(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(registry.os, "rename", broken_rename)
    with pytest.raises(OSError):
        _stage(tmp_path, "v2")
    assert registry.read_latest(tmp_path) == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "v1"]


def test_invalid_manifest_is_never_committed(tmp_path: Path) -> None:
    with pytest.raises(Exception):
        with registry.StagedVersion(tmp_path, "v1") as staged:
            (staged.path / "ranker.onnx").write_bytes(b"x")
            staged.commit(dict(MINIMAL, ranker_variants=[]))
    assert list(tmp_path.iterdir()) == []


def test_unpublished_version_and_explicit_publish(tmp_path: Path) -> None:
    _stage(tmp_path, "v1")
    _stage(tmp_path, "v2", publish=False)
    assert registry.read_latest(tmp_path) == "v1"
    registry.set_latest(tmp_path, "v2")
    assert registry.read_latest(tmp_path) == "v2"
    with pytest.raises(FileNotFoundError):
        registry.set_latest(tmp_path, "v3")
    with pytest.raises(FileExistsError):
        _stage(tmp_path, "v2")
    for bad in ("../x", "LATEST", "v1.tmp-abc", ""):
        with pytest.raises(ValueError):
            registry.StagedVersion(tmp_path, bad)


def test_bootstrap_parity_failure_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, catalog: list
) -> None:
    first = bootstrap.export_bootstrap(tmp_path, dataset=None, tiny=True, version="good", items=catalog[:5])
    monkeypatch.setattr(export, "FP32_ATOL_SCORES", -1.0)  # no export can meet it
    with pytest.raises(RuntimeError, match="parity"):
        bootstrap.export_bootstrap(tmp_path, dataset=None, tiny=True, version="bad", items=catalog[:5])
    assert registry.read_latest(tmp_path) == first.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "good"]
    assert json.loads((first / "manifest.json").read_text())["version"] == "good"
