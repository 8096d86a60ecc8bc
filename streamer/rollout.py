"""``streamrec-rollout``: canary a model version on a share of users, watch it, promote or roll back.

    streamrec-rollout canary VERSION --share 0.1   # VERSION ranks 10 % of users (stable user hash)
    streamrec-rollout status                       # the rollout, the split, what every worker serves
    streamrec-rollout promote                      # everyone on VERSION, then VERSION becomes production
    streamrec-rollout rollback                     # everyone back on production (or the previous one)
    streamrec-rollout decide [--apply]             # the automatic rule: promote / roll back / wait

Common options: ``--redis-url`` (``REDIS_URL``), ``--prefix`` (``STREAMREC_REDIS_META_PREFIX``),
``--model-root`` (``STREAMREC_MODEL_ROOT``), ``--kafka`` (``KAFKA_BOOTSTRAP_SERVERS``) and
``--topic`` (``STREAMREC_MODEL_UPDATES_TOPIC``) for the model-updates message of a promotion.

It acts on every worker through the two mechanisms they already follow, nothing else:

* the runtime A/B split in Redis (``<prefix>config:variants``, ``streamer.variants``), which every
  worker polls: a canary is the split ``ranker@VERSION:share,ranker@production:rest[,control:c]``
  (the canary band first, so only the canary's users move; ``control`` keeps its users);
* the model store's ``LATEST`` plus a ``model-updates`` message (the verified hot swap), which
  moves production.

``canary`` records the rollout in ``<prefix>rollout:state`` (version, share, the split before it,
production at the start) and writes the canary split; workers load and smoke-test VERSION from
``<STREAMREC_MODEL_ROOT>/VERSION`` before serving it, and report to ``<prefix>rollout:workers``.
With ``--wait`` it waits for every live worker: if any refused VERSION (its smoke test or a
checksum failed), the canary is rolled back at once and the command exits 1 with the reason.

``promote`` first pins the production arm to VERSION (all its users on VERSION within one poll,
no load: the workers hold it), then moves ``LATEST`` and announces VERSION on model-updates; once
every live worker reports VERSION as production, it restores the split from before the canary.
``rollback`` during a canary restores that split (immediate: production is always loaded); after
a promotion it pins the previous production, moves ``LATEST`` back and announces it.

Exit status: 0 done, 1 refused or not confirmed by the workers in time (the command says what to
do), 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

from schemas.kafka_settings import SettingsError
from streamer.variants import (
    PRODUCTION,
    Split,
    announce_change,
    arm_version,
    config_key,
    format_split,
    parse_split,
    refused_key,
    valid_version,
    workers_key,
)

STALE_S = 120.0  # a worker report older than this is from a worker that is gone


class RolloutError(Exception):
    """The command cannot be carried out; ``str()`` says why and what to do."""


def state_key(prefix: str) -> str:
    return f"{prefix}rollout:state"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---- splits ------------------------------------------------------------------------------------
def canary_split(base: Split, version: str, share: float) -> Split:
    """``base`` with ``share`` of users moved from its production arm to ``ranker@version``, the
    canary band first so no other user changes arm; the production arm named ``ranker@production``
    so the report tells the versions apart."""
    if not 0 < share < 1:
        raise RolloutError(f"--share must be between 0 and 1, got {share}")
    prod = [w for label, w in base if arm_version(label) == PRODUCTION]
    if not prod:
        raise RolloutError(
            f"the split {format_split(base)} has no production arm (ranker) to take the canary's users from"
        )
    if any(arm_version(label) == version for label, _w in base):
        raise RolloutError(f"{version} is already an arm of {format_split(base)}")
    if share > prod[0] + 1e-9:
        raise RolloutError(f"--share {share} is more than the production arm's {prod[0]:g} in {format_split(base)}")
    out = [(f"ranker@{version}", share)]
    for label, w in base:
        out.append(("ranker@production", round(w - share, 12)) if arm_version(label) == PRODUCTION else (label, w))
    return tuple(out)


def pinned_split(base: Split, version: str) -> Split:
    """``base`` with its production arm served by ``version`` (same band, same users)."""
    return tuple((f"ranker@{version}", w) if arm_version(label) == PRODUCTION else (label, w) for label, w in base)


# ---- Redis -------------------------------------------------------------------------------------
class Rollout:
    """The rollout commands over a sync Redis client and the model store."""

    def __init__(
        self,
        redis,
        prefix: str,
        model_root: Path | None,
        *,
        kafka: str | None = None,
        topic: str = "model-updates",
        location: str | None = None,
        default_split: str = "ranker:1.0",
        out=print,
    ) -> None:
        self.r = redis
        self.prefix = prefix
        self.model_root = Path(model_root) if model_root else None
        self.kafka = kafka
        self.topic = topic
        self.location = location
        self.default_split = default_split
        self.out = out

    # -- reads
    def state(self) -> dict | None:
        raw = self.r.get(state_key(self.prefix))
        return orjson.loads(raw) if raw else None

    def override(self) -> str | None:
        raw = self.r.get(config_key(self.prefix))
        return raw.decode() if raw else None

    def current_split(self) -> tuple[Split, str]:
        """The split in force and where it comes from ("override" or "env")."""
        raw = self.override()
        if raw is not None:
            return parse_split(raw), "override"
        return parse_split(self.default_split, "STREAMREC_VARIANTS"), "env"

    def workers(self, stale_s: float = STALE_S) -> dict[str, dict]:
        now = time.time()
        out = {}
        for k, v in self.r.hgetall(workers_key(self.prefix)).items():
            rep = orjson.loads(v)
            rep["age_s"] = round(now - rep.get("ts", 0), 1)
            rep["live"] = rep["age_s"] <= stale_s
            out[k.decode() if isinstance(k, bytes) else k] = rep
        return out

    def refused(self) -> dict[str, str]:
        return {k.decode(): v.decode("utf-8", "replace") for k, v in self.r.hgetall(refused_key(self.prefix)).items()}

    def latest(self) -> str | None:
        if self.model_root is None:
            return None
        from exporters.registry import read_latest

        return read_latest(self.model_root)

    # -- writes
    def _write_state(self, state: dict) -> None:
        self.r.set(state_key(self.prefix), orjson.dumps(dict(state, updated_at=_now())))

    def _write_split(self, split: Split | None) -> None:
        """SET the override (None: DEL it, back to STREAMREC_VARIANTS)."""
        key = config_key(self.prefix)
        if split is None:
            self.r.delete(key)
            self.out(f"split: override removed ({key}), workers use STREAMREC_VARIANTS")
        else:
            self.r.set(key, format_split(split))
            self.out(f"split: {format_split(split)}")
        announce_change(self.r, key)  # workers re-read it now, not at their next poll

    def _restore_base(self, state: dict) -> None:
        self._write_split(parse_split(state["base"]) if state["base_from"] == "override" else None)

    def _publish(self, version: str) -> None:
        """Move LATEST to ``version`` and announce it on model-updates (the hot swap)."""
        if self.model_root is None:
            raise RolloutError("--model-root (STREAMREC_MODEL_ROOT) is needed to move LATEST")
        from exporters.registry import set_latest

        set_latest(self.model_root, version)
        self.out(f"LATEST -> {version}")
        if not self.kafka:
            self.out(
                "no --kafka (KAFKA_BOOTSTRAP_SERVERS): not announced on model-updates; workers switch at their next start"
            )
            return
        from exporters.publish import publish_model_update

        location = f"{self.location.rstrip('/')}/{version}" if self.location else None
        publish_model_update(
            self.kafka, self.model_root / version, self.topic, location=location, note="streamrec-rollout"
        )
        self.out(f"announced {version} on {self.topic}")

    def _wait(self, what: str, done, wait_s: float, poll_s: float = 0.5, abort=None) -> dict[str, dict] | None:
        """Until ``done(report)`` holds for every live worker (and at least one reported), or
        ``abort(report)`` for any; the reports then, or None after ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            live = {w: rep for w, rep in self.workers().items() if rep["live"]}
            if live and (
                all(done(rep) for rep in live.values()) or (abort and any(abort(rep) for rep in live.values()))
            ):
                return live
            if time.monotonic() >= deadline:
                pending = sorted(w for w, rep in live.items() if not done(rep))
                self.out(
                    f"not confirmed after {wait_s:g} s: {what}; "
                    f"{'no worker reported' if not live else 'waiting for ' + ', '.join(pending)}"
                )
                return None
            time.sleep(poll_s)

    # -- commands
    def canary(self, version: str, share: float, wait_s: float = 60.0, base: str | None = None) -> int:
        if not valid_version(version):
            raise RolloutError(f"{version!r} is not a version name")
        if self.model_root is None:
            raise RolloutError(
                "--model-root (STREAMREC_MODEL_ROOT) is needed: the canary is compared with production (LATEST)"
            )
        if not (self.model_root / version / "manifest.json").is_file():
            raise RolloutError(f"no version {version} in the model store {self.model_root}")
        state = self.state()
        if state and state["status"] in ("canary", "promoting"):
            raise RolloutError(
                f"a rollout is in progress ({state['status']} {state['version']}): promote or roll it back first"
            )
        refused = self.refused()
        if version in refused:
            raise RolloutError(f"{version} was refused by a worker ({refused[version]}); fix it as a new version")
        production = self.latest()
        if version == production:
            raise RolloutError(f"{version} is production already")
        split, source = (parse_split(base, "--base"), "override") if base else self.current_split()
        new = canary_split(split, version, share)
        self._write_state(
            {
                "status": "canary",
                "version": version,
                "share": share,
                "base": format_split(split),
                "base_from": source,
                "production": production,
                "started_at": _now(),
            }
        )
        self._write_split(new)
        self.out(f"canary {version} on {share:.1%} of users (production {production or '?'})")
        if wait_s <= 0:
            return 0
        live = self._wait(
            f"workers serving {version}",
            lambda rep: version in rep["loaded"] or rep["production"] == version,
            wait_s,
            abort=lambda rep: version in rep["refused"],
        )
        reports = live if live is not None else {w: rep for w, rep in self.workers().items() if rep["live"]}
        refusals = {w: rep["refused"][version] for w, rep in reports.items() if version in rep["refused"]}
        if not refusals and version in self.refused():  # refused by a worker that is gone since
            refusals["(a worker)"] = self.refused()[version]
        if refusals:
            self.out(f"{version} REFUSED by {', '.join(refusals)}: {next(iter(refusals.values()))}")
            self.rollback(wait_s=0)
            return 1
        if live is None:
            return 1
        self.out(f"all {len(live)} live workers serve {version}")
        return 0

    def promote(self, wait_s: float = 120.0) -> int:
        state = self.state()
        if not state or state["status"] not in ("canary", "promoting"):
            raise RolloutError("no canary in progress (streamrec-rollout canary VERSION --share S)")
        version = state["version"]
        refused = self.refused()
        if version in refused:
            raise RolloutError(f"{version} was refused by a worker ({refused[version]}): roll back")
        self._write_state(dict(state, status="promoting"))
        live = self._move_production(state, version, "promote", wait_s)
        if live is None:
            return 1
        self._write_state(dict(state, status="promoted", previous=state["production"], promoted_at=_now()))
        self.out(f"promoted {version}: production on all {len(live)} live workers")
        return 0

    def _move_production(self, state: dict, version: str, command: str, wait_s: float) -> dict | None:
        """Pin the production arm to ``version`` (all its users move within one poll), make it
        production (LATEST + model-updates), and once every live worker runs it as production
        restore the split from before the canary. The live workers' reports, or None (pinned)."""
        self._write_split(pinned_split(parse_split(state["base"]), version))
        if self.latest() != version:
            self._publish(version)
        live = self._wait(f"workers with production {version}", lambda rep: rep["production"] == version, wait_s)
        if live is None:
            self.out(f"the split stays pinned to {version}; run `streamrec-rollout {command}` again to finish")
            return None
        self._restore_base(state)
        return live

    def rollback(self, wait_s: float = 120.0) -> int:
        state = self.state()
        if not state or state["status"] == "rolled_back":
            raise RolloutError("nothing to roll back")
        version, previous = state["version"], state["production"]
        if state["status"] == "canary" or (state["status"] == "promoting" and self.latest() != version):
            self._restore_base(state)  # production never left the workers: immediate
            self._write_state(dict(state, status="rolled_back", rolled_back_at=_now()))
            self.out(f"rolled back: {version} out of the split, everyone on production {previous or ''}".rstrip())
            return 0
        if not previous:
            raise RolloutError(f"{version} is production and the rollout recorded no previous version")
        self._write_state(dict(state, status="rolling_back"))
        live = self._move_production(state, previous, "rollback", wait_s)  # workers load it again, then serve it
        if live is None:
            return 1
        self._write_state(dict(state, status="rolled_back", rolled_back_at=_now()))
        self.out(f"rolled back to {previous} on all {len(live)} live workers")
        return 0

    def status(self) -> dict:
        split, source = self.current_split()
        return {
            "state": self.state(),
            "split": format_split(split),
            "split_from": source,
            "latest": self.latest(),
            "workers": self.workers(),
            "refused": self.refused(),
        }

    def decide(
        self, *, min_lists: int, level: float, metric: str = "conversion", apply: bool = False
    ) -> tuple[str, str]:
        """The automatic rule after ``min_lists`` lists per arm: the canary's ``metric`` minus
        production's, with its interval at ``level``: above 0 -> promote, below 0 -> rollback,
        else wait (returns the action and why; with ``apply`` it is carried out)."""
        from streamer.attribution import read_stats
        from streamer.report import compare

        state = self.state()
        if not state or state["status"] != "canary":
            raise RolloutError("no canary in progress")
        canary, prod = f"ranker@{state['version']}", f"ranker@{state['production']}"
        stats = read_stats(self.r, self.prefix)
        if canary not in stats or prod not in stats:
            return "wait", f"no lists yet from {canary if canary not in stats else prod}"
        c = compare(stats[canary], stats[prod], level)[metric]
        n = min(stats[canary]["lists"], stats[prod]["lists"])
        why = (
            f"{metric} {canary} - {prod} = {100 * c['diff']:+.2f} pp [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}] "
            f"at {level:.0%}, p = {c['p_value']:.3g}, {n} lists in the smaller arm"
        )
        if n < min_lists:
            action = "wait"
            why += f" (< {min_lists})"
        elif c["low"] > 0:
            action = "promote"
        elif c["high"] < 0:
            action = "rollback"
        else:
            action = "wait"
            why += ": no significant difference yet"
        if apply and action == "promote":
            self.promote()
        elif apply and action == "rollback":
            self.rollback()
        return action, why


def render_status(st: dict) -> str:
    lines = []
    s = st["state"]
    if s:
        lines.append(
            f"rollout: {s['status']} {s['version']} (share {s['share']:g}, production at start {s['production']}, "
            f"started {s['started_at']}, split before {s['base']})"
        )
    else:
        lines.append("rollout: none")
    lines.append(
        f"split: {st['split']} ({'Redis override' if st['split_from'] == 'override' else 'STREAMREC_VARIANTS, no override'})"
    )
    lines.append(f"LATEST: {st['latest'] or '(model store not given)'}")
    for v, why in sorted(st["refused"].items()):
        lines.append(f"REFUSED {v}: {why}")
    lines.append("workers:" if st["workers"] else "workers: none reported")
    for w, rep in sorted(st["workers"].items()):
        serving = ", ".join(f"{label}:{wt:g}" for label, wt in rep["serving"].items())
        refused = f"; refused {', '.join(rep['refused'])}" if rep["refused"] else ""
        lines.append(
            f"  {w}: production {rep['production']}, also loaded {', '.join(rep['loaded']) or '-'}, serving {serving}"
            f"{refused} ({rep['age_s']:.0f} s ago{'' if rep['live'] else ', GONE?'})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="streamrec-rollout", description="Canary, promote or roll back a model version on all workers."
    )
    p.add_argument("--redis-url", default=env.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    p.add_argument(
        "--prefix",
        default=env.get("STREAMREC_REDIS_META_PREFIX", "streamrec:"),
        help="the workers' STREAMREC_REDIS_META_PREFIX",
    )
    p.add_argument(
        "--model-root",
        type=Path,
        default=env.get("STREAMREC_MODEL_ROOT"),
        help="the model store (LATEST and version folders)",
    )
    p.add_argument(
        "--kafka",
        default=env.get("KAFKA_BOOTSTRAP_SERVERS"),
        help="bootstrap servers, to announce a new production version",
    )
    p.add_argument("--topic", default=env.get("STREAMREC_MODEL_UPDATES_TOPIC", "model-updates"))
    p.add_argument(
        "--location",
        default=None,
        help="the model store as the workers see it, for model-updates (default: --model-root)",
    )
    p.add_argument("--json", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("canary", help="serve VERSION to a share of users")
    c.add_argument("version")
    c.add_argument("--share", type=float, default=0.1)
    c.add_argument("--base", default=None, help="the split to take the share from (default: the one in force)")
    c.add_argument("--wait", type=float, default=60.0, help="seconds to wait for every worker to serve it (0: don't)")
    sub.add_parser("status", help="the rollout, the split, and what every worker serves or refused")
    for name, help_ in (
        ("promote", "make the canary production on every worker"),
        ("rollback", "everyone back on production"),
    ):
        q = sub.add_parser(name, help=help_)
        q.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the workers' confirmation")
    d = sub.add_parser("decide", help="the automatic rule: promote or roll back once the difference is significant")
    d.add_argument("--min-lists", type=int, default=1000, help="lists per arm before any decision")
    d.add_argument("--level", type=float, default=0.95, help="confidence level of the interval")
    d.add_argument("--metric", choices=("conversion", "ctr", "cart_rate"), default="conversion")
    d.add_argument("--apply", action="store_true", help="carry the decision out")
    args = p.parse_args(argv)
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout

    from streamer.security import tool_redis_client

    try:
        r = tool_redis_client(args.redis_url, socket_connect_timeout=5, socket_timeout=5)
        ro = Rollout(
            r,
            args.prefix,
            args.model_root,
            kafka=args.kafka,
            topic=args.topic,
            location=args.location,
            default_split=env.get("STREAMREC_VARIANTS", "ranker:1.0"),
        )
        if args.cmd == "canary":
            return ro.canary(args.version, args.share, args.wait, args.base)
        if args.cmd == "promote":
            return ro.promote(args.wait)
        if args.cmd == "rollback":
            return ro.rollback(args.wait)
        if args.cmd == "decide":
            action, why = ro.decide(min_lists=args.min_lists, level=args.level, metric=args.metric, apply=args.apply)
            print(orjson.dumps({"action": action, "why": why}).decode() if args.json else f"{action}: {why}")
            return 0
        st = ro.status()
        print(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode() if args.json else render_status(st))
        return 0
    except RolloutError as exc:
        print(f"streamrec-rollout: {exc}", file=sys.stderr)
        return 1
    except SettingsError as exc:
        print(f"streamrec-rollout: bad configuration: {exc}", file=sys.stderr)
        return 2
    except (RedisConnectionError, RedisTimeout, OSError) as exc:
        print(f"streamrec-rollout: cannot reach Redis: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
