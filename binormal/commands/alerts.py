"""``binormal alerts add|list|remove|test|failed|send``: alert rules and their sender (docs/alerts.md).

Talks to Redis directly (``REDIS_URL``, ``BINORMAL_PREFIX``, ``BINORMAL_SHARDS``), like ``binormal
rules``. A rule belongs to its scope's org, and its name is unique within that org only: ``remove``
and ``test`` take ``--org`` (needed when several orgs have a rule of that name). Exit codes: 0 done,
1 nothing to remove, 2 a bad argument (the message names it), 3 Redis unreachable.
"""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers, run_on_redis


def register(sub: Subparsers) -> None:
    """Add ``alerts add|list|remove|test|failed|send``."""
    a = sub.add_parser("alerts", help="alert rules (signed webhooks on crossings), failed alerts, the sender")
    s = a.add_subparsers(dest="alerts_command", required=True, metavar="{add,list,remove,test,failed,send}")
    add = s.add_parser("add", help="add (or replace) an alert rule")
    add.add_argument("name", help="the rule's name (letters, digits, _ . -)")
    add.add_argument("--scope", required=True, help="ORG/SOURCE/POP, each part may be *")
    add.add_argument("--min-zscore", type=float, required=True, help="fire at this zscore or above")
    add.add_argument("--min-pscore", type=float, help="and at this pscore or above (0..1)")
    add.add_argument("--min-events", type=int, default=0, help="and with at least this many events")
    add.add_argument("--cooldown", default="10m", help="quiet time per individual after a fire (default 10m)")
    add.add_argument("--webhook", required=True, help="the http(s) URL alerts are POSTed to")
    add.add_argument("--secret-file", help="file holding the HMAC-SHA256 signing secret")
    add.add_argument("--by", default="cli", help="who set it (default: cli)")
    s.add_parser("list", help="list alert rules as JSON lines (no secrets)")
    rm = s.add_parser("remove", help="remove an alert rule")
    rm.add_argument("name")
    rm.add_argument("--org", help="the rule's org (its scope's; needed when several orgs have a rule of that name)")
    test = s.add_parser("test", help="put a test alert of rule NAME on the alert stream (the sender delivers it)")
    test.add_argument("name")
    test.add_argument("--org", help="the rule's org (its scope's; needed when several orgs have a rule of that name)")
    failed = s.add_parser("failed", help="list alerts the sender gave up on (JSON lines), or --replay them")
    failed.add_argument("--replay", action="store_true", help="put them back on their alert stream")
    send = s.add_parser("send", help="run the alert sender (delivers the alert streams to the webhooks)")
    send.add_argument("--timeout", type=float, default=5.0, help="seconds per webhook request (default 5)")
    send.add_argument("--tries", type=int, default=6, help="attempts before an alert is failed (default 6)")
    send.add_argument("--backoff", type=float, default=0.5, help="first retry's backoff cap in seconds")


def run(args: argparse.Namespace) -> int:
    """Run one of the subcommands."""
    import asyncio
    import signal
    import sys
    from pathlib import Path

    import orjson

    from binormal.common.alerts import (
        add_alert_rule,
        find_alert_rules,
        list_alert_rules,
        parse_alert_rule,
        remove_alert_rule,
        send_test_alert,
    )
    from binormal.common.config import ServiceSettings, from_env
    from binormal.common.connection import Client, open_client
    from binormal.common.keys import Keyspace
    from binormal.common.rules import RuleError
    from binormal.worker.sender import Sender, SenderSettings, list_failed, replay_failed

    settings = from_env(ServiceSettings)
    keys = Keyspace(prefix=settings.prefix, shards=settings.shards)
    out = sys.stdout.buffer

    async def which(client: Client, name: str, org: str | None) -> str | None:
        """The org of the rule ``name`` meant: ``org``, or the only org with such a rule; RuleError if several."""
        if org is not None:
            return org
        found = await find_alert_rules(client, keys, name)
        if len(found) > 1:
            orgs = ", ".join(r.org for r in found)
            raise RuleError(f"org: rules called {name!r} exist in orgs {orgs}: give --org", "org")
        return found[0].org if found else None

    async def go() -> int:
        client = await open_client(settings.redis_url, cluster=settings.redis_cluster)
        try:
            cmd = args.alerts_command
            if cmd == "add":
                data: dict[str, object] = {
                    "name": args.name,
                    "scope": args.scope,
                    "min_zscore": args.min_zscore,
                    "min_events": args.min_events,
                    "cooldown": args.cooldown,
                    "webhook": args.webhook,
                }
                if args.min_pscore is not None:
                    data["min_pscore"] = args.min_pscore
                if args.secret_file is not None:
                    try:
                        data["secret"] = Path(args.secret_file).read_text(encoding="utf-8").strip()
                    except (OSError, UnicodeDecodeError) as exc:
                        raise RuleError(f"secret: cannot read --secret-file: {exc}", "secret") from None
                rule = parse_alert_rule(data, by=args.by)
                new = await add_alert_rule(client, keys, rule)
                out.write(orjson.dumps({**rule.as_dict(), "created": new}) + b"\n")
            elif cmd == "list":
                for rule in await list_alert_rules(client, keys):
                    out.write(orjson.dumps(rule.as_dict()) + b"\n")
            elif cmd == "remove":
                org = await which(client, args.name, args.org)
                if org is None or not await remove_alert_rule(client, keys, org, args.name):
                    sys.stderr.write(f"binormal alerts remove: no alert rule called {args.name!r}\n")
                    return 1
                sys.stdout.write(f"removed alert rule {args.name} of org {org}\n")
            elif cmd == "test":
                org = await which(client, args.name, args.org)
                entry = None if org is None else await send_test_alert(client, keys, org, args.name)
                if entry is None:
                    sys.stderr.write(f"binormal alerts test: no alert rule called {args.name!r}\n")
                    return 1
                sys.stdout.write(f"test alert {entry} queued for rule {args.name}\n")
            elif cmd == "failed":
                if args.replay:
                    sys.stdout.write(f"replayed {await replay_failed(client, keys)} failed alerts\n")
                else:
                    for record in await list_failed(client, keys):
                        out.write(orjson.dumps(record) + b"\n")
            else:
                sender = Sender(
                    client, keys, SenderSettings(timeout_s=args.timeout, tries=args.tries, backoff_s=args.backoff)
                )
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, sender.stop)
                await sender.run()
            return 0
        finally:
            await client.aclose()

    return run_on_redis(go, "alerts", args.alerts_command)
