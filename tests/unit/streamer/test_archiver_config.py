"""streamrec-archive: bad configuration fails at start with one line naming the setting."""

from __future__ import annotations

import pytest

from streamer.archiver import load_settings, main


@pytest.mark.parametrize(
    "env, named",
    [
        ({}, "KAFKA_BOOTSTRAP_SERVERS"),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "h:1", "STREAMREC_ARCHIVE_FLUSH_RECORDS": "abc"},
            "STREAMREC_ARCHIVE_FLUSH_RECORDS",
        ),
        ({"KAFKA_BOOTSTRAP_SERVERS": "h:1", "STREAMREC_ARCHIVE_FLUSH_S": "0"}, "STREAMREC_ARCHIVE_FLUSH_S"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "h:1", "STREAMREC_ARCHIVE_GROUP": "streamrec"}, "STREAMREC_ARCHIVE_GROUP"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "h:1", "STREAMREC_ARCHIVE_DIR": "/proc/no/such"}, "STREAMREC_ARCHIVE_DIR"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_setting(monkeypatch, capsys, env, named):
    for var in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "REDIS_URL",
        "STREAMREC_ARCHIVE_DIR",
        "STREAMREC_ARCHIVE_GROUP",
        "STREAMREC_APP_ID",
        "STREAMREC_ARCHIVE_FLUSH_RECORDS",
        "STREAMREC_ARCHIVE_FLUSH_S",
    ):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"streamrec-archive: bad configuration: {named}:"), err


def test_defaults_need_no_redis_and_use_their_own_group(tmp_path):
    s = load_settings(
        {"KAFKA_BOOTSTRAP_SERVERS": "h:1", "STREAMREC_APP_ID": "shop", "STREAMREC_ARCHIVE_DIR": str(tmp_path)}
    )
    assert s.archive_group == "shop-archive" and s.archive_flush_records == 50000 and s.archive_flush_s == 60
