"""The checked-in JSON Schema files are exactly what the msgspec models generate."""

from __future__ import annotations

from schemas import generate, models


def test_checked_in_schema_files_are_generated_from_the_models():
    stale = generate.stale_files()
    assert not stale, f"stale: {stale}; run `python -m schemas.generate`"


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    for filename in models.JSON_SCHEMA_FILES.values():
        (tmp_path / filename).write_text((generate.JSON_DIR / filename).read_text())
    (tmp_path / models.JSON_SCHEMA_FILES["event"]).write_text("{}\n")
    monkeypatch.setattr(generate, "JSON_DIR", tmp_path)
    assert generate.main(["--check"]) == 1
    assert "event.v1.json is stale" in capsys.readouterr().err
    assert generate.main([]) == 0
    assert generate.main(["--check"]) == 0


def test_every_contract_has_a_file_and_a_model():
    assert set(models.JSON_SCHEMA_FILES) == set(models.CONTRACTS)
    assert {p.name for p in generate.JSON_DIR.glob("*.json")} == set(models.JSON_SCHEMA_FILES.values())
