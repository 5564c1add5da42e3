"""``binormal rules add|list|remove``: analyst rules and feedback in Redis (see :mod:`binormal.common.rules`).

Talks to Redis directly (``REDIS_URL``, ``BINORMAL_PREFIX``, ``BINORMAL_SHARDS``), like ``binormal
recompute``. Exit codes: 0 done, 1 nothing to remove, 2 a bad argument (the message names it),
3 Redis unreachable.
"""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers, run_on_redis

KINDS = ("mute", "exclude", "mark")  # common.rules.KINDS (not imported: the parser stays cheap)


def _scope_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--org", required=required, help="the scope's org")
    p.add_argument("--source", required=required, help="the scope's source")
    p.add_argument("--pop", required=required, help="the scope's population")


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=KINDS, help="mute (an id or an action), exclude (an id from learning), mark (an id)")
    _scope_args(p, True)
    who = p.add_mutually_exclusive_group()
    who.add_argument("--id", help="the individual")
    who.add_argument("--action", help="the action (mute only)")


def register(sub: Subparsers) -> None:
    """Add ``rules add|list|remove``."""
    r = sub.add_parser("rules", help="mute, exclude from learning, or mark individuals (analyst rules)")
    rs = r.add_subparsers(dest="rules_command", required=True, metavar="{add,list,remove}")
    add = rs.add_parser("add", help="add (or replace) a rule")
    _target_args(add)
    add.add_argument("--label", choices=("confirmed", "benign"), help="mark only: the analyst's verdict")
    add.add_argument("--note", default="", help="free text kept with the rule")
    add.add_argument("--by", default="cli", help="who set it (default: cli)")
    ls = rs.add_parser("list", help="list rules as JSON lines (all scopes, or one org / scope)")
    _scope_args(ls, False)
    rm = rs.add_parser("remove", help="remove a rule")
    _target_args(rm)


def run(args: argparse.Namespace) -> int:
    """Run one of add, list, remove."""
    import sys

    import orjson

    from binormal.common.config import ServiceSettings, from_env
    from binormal.common.connection import open_client
    from binormal.common.keys import Keyspace, Scope
    from binormal.common.rules import RuleError, add_rule, list_rules, parse_rule, parse_target, remove_rule

    settings = from_env(ServiceSettings)
    keys = Keyspace(prefix=settings.prefix, shards=settings.shards)
    fields = {n: getattr(args, n, None) for n in ("kind", "org", "source", "pop", "id", "action", "label")}
    fields = {n: v for n, v in fields.items() if v is not None}

    async def go() -> int:
        client = await open_client(settings.redis_url, cluster=settings.redis_cluster)
        try:
            if args.rules_command == "add":
                rule = parse_rule({**fields, "note": args.note}, by=args.by)
                new = await add_rule(client, keys, rule)
                sys.stdout.buffer.write(orjson.dumps({**rule.as_dict(), "created": new}) + b"\n")
                return 0
            if args.rules_command == "remove":
                kind, where, target, value = parse_target(fields)
                if not await remove_rule(client, keys, kind, where, target, value):
                    sys.stderr.write(f"binormal rules remove: no {kind} rule on that {target} in that scope\n")
                    return 1
                sys.stdout.write(f"removed {kind} rule\n")
                return 0
            scope: Scope | None = None
            if args.source is not None or args.pop is not None:
                if args.org is None or args.source is None or args.pop is None:
                    raise RuleError("--org, --source and --pop: give all three to list one scope", "pop")
                scope = Scope(args.org, args.source, args.pop)
            orgs = frozenset({args.org}) if args.org is not None else None
            for rule in await list_rules(client, keys, orgs, scope):
                sys.stdout.buffer.write(orjson.dumps(rule.as_dict()) + b"\n")
            return 0
        finally:
            await client.aclose()

    return run_on_redis(go, "rules", args.rules_command)
