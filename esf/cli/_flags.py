"""``esf flags …``: list, show, evaluate and change feature flags.

Each handler gets the service from ``load_foundation(args.app).flags`` and
passes it to a ``run_*`` function, which tests call with a service they built.
Changes go through the configuration service (validated, versioned, audited);
``set --at`` schedules the change as a configuration batch applied at that time.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import NotFound, ValidationError
from ..events._model import thaw_json
from ._common import CommandError, load_foundation, parse_duration, parse_json_arg

if TYPE_CHECKING:
    from ..flags import FlagService

__all__ = ["parse_at", "register", "run_disable", "run_enable", "run_eval", "run_kill", "run_list", "run_set",
           "run_show"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("flags", help="list, evaluate and change feature flags")
    sub = parser.add_subparsers(dest="flags_command", metavar="SUBCOMMAND")

    p = sub.add_parser("list", help="every flag: state, variants, rules")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_handler(run_list))

    p = sub.add_parser("show", help="a flag's definition (JSON)")
    p.add_argument("name")
    p.set_defaults(handler=_handler(run_show))

    p = sub.add_parser("eval", help="evaluate a flag for a context (in this process, from the configuration)")
    p.add_argument("name")
    p.add_argument("--context", default="{}", help='JSON object, e.g. \'{"key": "user-1", "country": "FR"}\'')
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_handler(run_eval))

    p = sub.add_parser("set", help="write a flag's definition from FILE (JSON) or - (stdin); validated first")
    p.add_argument("name")
    p.add_argument("--file", required=True)
    p.add_argument("--at", default=None, help="write it at this time instead of now: ISO 8601 with its offset "
                                              "(2026-12-03T22:00:00+00:00) or a delay (30m, 2h); a scheduled "
                                              "configuration batch (esf config scheduled)")
    p.add_argument("--expected-version", type=int, default=None,
                   help="with --at: apply only if the configuration is still at this version")
    _actor_option(p)
    p.set_defaults(handler=_handler(run_set))

    for verb, run, text in (("enable", run_enable, "turn a flag on and release its kill switch"),
                            ("disable", run_disable, "turn a flag off (its off variant for everyone)"),
                            ("kill", run_kill, "pull a flag's kill switch (off for everyone until enabled)")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("name")
        _actor_option(p)
        p.set_defaults(handler=_handler(run))


def _actor_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actor", default=None, help="who makes the change (default: cli:<user>)")


def _actor(args: argparse.Namespace) -> str:
    return str(args.actor or f"cli:{getpass.getuser()}")


def _handler(run: Callable[[FlagService, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        service: FlagService = load_foundation(args.app).flags
        return run(service, args)

    return handler


def _state(definition: Mapping[str, Any]) -> str:
    if definition.get("kill") is True:
        return "killed"
    return "on" if definition.get("enabled", True) is not False else "off"


# -- commands -----------------------------------------------------------------


def run_list(service: FlagService, args: argparse.Namespace) -> int:
    problems = service.problems()
    rows = []
    for name in service.names():
        try:
            d = service.definition(name)
        except NotFound:  # stored as something else than an object (written without validation)
            d = {}
        rows.append({"name": name, "state": _state(d), "variants": list(d.get("variants", {"on": 1, "off": 0})),
                     "rules": len(d.get("rules", ())), "valid": f"flags.{name}" not in problems,
                     "description": d.get("description", "")})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no flags")
        return 0
    for r in rows:
        mark = "" if r["valid"] else "  INVALID (evaluates to the caller's default)"
        print(f"{r['name']:<32} {r['state']:<7} variants={','.join(r['variants'])} rules={r['rules']}{mark}")
    return 0


def run_show(service: FlagService, args: argparse.Namespace) -> int:
    print(json.dumps(thaw_json(service.definition(args.name)), indent=2, sort_keys=True))
    return 0


def run_eval(service: FlagService, args: argparse.Namespace) -> int:
    context = parse_json_arg(args.context, "--context")
    if not isinstance(context, dict):
        raise ValidationError("--context: expected a JSON object")
    answer = service.evaluate(args.name, context)
    out = {"flag": answer.flag, "value": thaw_json(answer.value), "variant": answer.variant, "reason": answer.reason,
           "rule": answer.rule, "error": answer.error}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        where = f" (rule {answer.rule})" if answer.rule is not None else ""
        tail = f": {answer.error}" if answer.error else ""
        print(f"{answer.flag} = {json.dumps(out['value'])} variant={answer.variant} "
              f"reason={answer.reason}{where}{tail}")
    return 1 if answer.reason == "error" else 0


def run_set(service: FlagService, args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    except OSError as exc:
        raise CommandError(f"cannot read {args.file!r}: {exc.strerror}") from None
    definition = parse_json_arg(text, args.file)
    if not isinstance(definition, dict):
        raise ValidationError(f"{args.file}: expected a JSON object (a flag definition)")
    if getattr(args, "at", None) is None:
        version = service.set(args.name, definition, actor=_actor(args))
        print(f"flag {args.name} written: configuration version {version}")
        return 0
    batch = service.schedule(args.name, definition, at=parse_at(args.at), actor=_actor(args),
                             expected_version=getattr(args, "expected_version", None))
    print(f"flag {args.name} scheduled for {batch.at.isoformat()}: batch {batch.id} (esf config scheduled show "
          f"{batch.id})")
    return 0


def parse_at(text: str, now: datetime | None = None) -> datetime:
    """``--at``: an ISO 8601 time with its offset, or a delay from now (``30m``, ``2h``).

    Raises:
        ValidationError: neither, or a time without its offset.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            delay = parse_duration(text)
        except ValidationError:
            raise ValidationError(f"--at: {text!r} is neither an ISO 8601 time with its offset "
                                  "(2026-12-03T22:00:00+00:00) nor a delay (30m, 2h)",
                                  errors={"at": "invalid"}) from None
        return (now or datetime.now(UTC)) + delay
    if moment.tzinfo is None:
        raise ValidationError(f"--at: {text!r} has no offset (add +00:00 or Z)", errors={"at": "naive"})
    return moment


def _change(verb: str, run: Callable[[str], int], args: argparse.Namespace) -> int:
    version = run(args.name)
    print(f"flag {args.name} {verb}: configuration version {version}")
    return 0


def run_enable(service: FlagService, args: argparse.Namespace) -> int:
    return _change("enabled", lambda name: service.enable(name, actor=_actor(args)), args)


def run_disable(service: FlagService, args: argparse.Namespace) -> int:
    return _change("disabled", lambda name: service.disable(name, actor=_actor(args)), args)


def run_kill(service: FlagService, args: argparse.Namespace) -> int:
    return _change("killed", lambda name: service.kill(name, actor=_actor(args)), args)
