"""Settings: typed, frozen, and a bad value names its variable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from streamer.settings import Settings, SettingsError, settings_table

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_defaults_and_frozen():
    s = Settings.from_env(BASE)
    assert s.events_topic == "events" and s.max_batch == 256 and s.variants == (("ranker", 1.0),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_batch = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "KAFKA_BOOTSTRAP_SERVERS: required"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "nohostport"}, "KAFKA_BOOTSTRAP_SERVERS: 'nohostport' is not host:port"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL: must start with"),
        ({"STREAMREC_MAX_BATCH": "abc"}, "STREAMREC_MAX_BATCH: must be an integer"),
        ({"STREAMREC_MAX_BATCH": "0"}, "STREAMREC_MAX_BATCH: must be between 1"),
        ({"STREAMREC_RANKING": "maybe"}, "STREAMREC_RANKING: must be true or false"),
        ({"STREAMREC_VARIANTS": "ranker:0.5"}, "STREAMREC_VARIANTS: weights must sum to 1"),
        ({"STREAMREC_DEVICE": "tpu"}, "STREAMREC_DEVICE: must be one of"),
        ({"STREAMREC_CANDIDATES": "10", "STREAMREC_LIST_SIZE": "20"}, "STREAMREC_CANDIDATES: must be >="),
    ],
)
def test_bad_values_name_the_setting(env, message):
    full = dict(BASE, **env) if env else {"REDIS_URL": BASE["REDIS_URL"]}
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.from_env(full)


def test_secrets_are_redacted():
    s = Settings.from_env(
        dict(BASE, REDIS_URL="redis://:hunter2@h:1/0", STREAMREC_PSEUDONYMIZE_KEY="k3y", KAFKA_SASL_PASSWORD="pw")
    )
    text = repr(s.redacted())
    assert "hunter2" not in text and "k3y" not in text and "'pw'" not in text


def test_readme_settings_table_is_current():
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    start, end = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
    current = readme[readme.index(start) + len(start) : readme.index(end)]
    assert current == settings_table(), (
        "README settings table is stale: run `python -m streamer.settings --write-readme`"
    )


def test_every_field_is_one_declared_setting():
    from streamer.settings import SETTINGS_DOC

    names = [f.name for f in dataclasses.fields(Settings)]
    assert names == list(SETTINGS_DOC), "every Settings field is declared with setting(...)"
    variables = [doc[0] for doc in SETTINGS_DOC.values()]
    assert len(set(variables)) == len(variables), "two settings read the same variable"


def test_secrets_stay_out_of_repr():
    s = Settings.from_env(
        dict(BASE, REDIS_PASSWORD="hunter2", STREAMREC_PSEUDONYMIZE_KEY="k3y", KAFKA_SASL_PASSWORD="pw")
    )
    text = repr(s)
    assert "hunter2" not in text and "k3y" not in text and "'pw'" not in text
    assert "max_batch=256" in text


def test_a_new_setting_is_one_declaration():
    # A settings class extended by one field: parsing, the bad-value message and the docs follow.
    from schemas.kafka_settings import parse_int, settings_doc
    from streamer.settings import setting

    @dataclasses.dataclass(frozen=True)
    class More(Settings):
        widgets: int = setting("STREAMREC_WIDGETS", "3", parse_int(1, 9), "widgets per list")

    assert More.from_env(BASE).widgets == 3
    assert More.from_env(dict(BASE, STREAMREC_WIDGETS="5")).widgets == 5
    with pytest.raises(SettingsError, match="STREAMREC_WIDGETS: must be between 1 and 9"):
        More.from_env(dict(BASE, STREAMREC_WIDGETS="10"))
    assert settings_doc(More)["widgets"][3] == "widgets per list"
