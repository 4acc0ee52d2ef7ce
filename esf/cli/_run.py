"""``esf worker``, ``esf flower``, ``esf health`` and ``esf up``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

from ._common import CommandError, load_foundation, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worker", help="run a worker")
    p.add_argument("--profile", default=None, help="worker profile (default: settings workers.profile)")
    p.add_argument("--queues", default=None, help="comma-separated queues (default: the profile's, else all)")
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--pool", choices=["prefork", "threads", "solo"], default=None)
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--health-port", type=int, default=None,
                   help="serve /healthz and /readyz on this port (default: settings health.port; bearer token "
                        "health.token required unless health.auth = none)")
    p.set_defaults(handler=_worker)

    p = sub.add_parser("flower", help="run Flower (basic auth from settings) against the same broker")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--address", default=None)
    p.add_argument("--no-auth", action="store_true", help="run without authentication (never on a network)")
    p.set_defaults(handler=_flower)

    p = sub.add_parser("health", help="report the health of every service")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_health)

    p = sub.add_parser("up", help="run a worker and beat together (Ctrl-C stops both)")
    p.add_argument("--demo", action="store_true", help="also run the demo workload")
    p.add_argument("--example", default=None, metavar="NAME",
                   help="run an example of examples/ (e.g. orders) and its workload (from the repository's root)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--health-port", type=int, default=None,
                   help="the worker serves /healthz and /readyz on this port (default: settings health.port)")
    p.set_defaults(handler=_up)


def _worker(args: argparse.Namespace) -> int:
    from esf.workers import get_profile, run_worker

    fnd = load_foundation(args.app)
    profile = get_profile(args.profile or fnd.settings.workers.profile)
    queues = tuple(q.strip() for q in args.queues.split(",") if q.strip()) if args.queues else None
    profile = profile.with_overrides(queues=queues, pool=args.pool or fnd.settings.workers.pool,
                                     concurrency=args.concurrency or fnd.settings.workers.concurrency)
    from esf.resilience import start_health_server

    if args.health_port is not None and not 0 < args.health_port <= 65535:
        raise CommandError(f"--health-port: {args.health_port} is not a port (1-65535)")
    server = start_health_server(fnd, args.health_port)
    try:
        run_worker(fnd, profile, loglevel=args.loglevel)
    finally:
        if server is not None:
            server.stop()
    return 0


def flower_argv(fnd: Any, *, port: int | None, address: str | None, no_auth: bool) -> tuple[list[str], dict[str, str]]:
    """Flower's arguments and environment; refuses to run without credentials unless ``no_auth``."""
    fs = fnd.settings.flower
    argv = ["flower", f"--port={port or fs.port}", f"--address={address or fs.address}"]
    env: dict[str, str] = {}
    if not no_auth:
        if not fs.user or fs.password is None or not fs.password.reveal():
            raise CommandError(
                "Flower needs credentials: set ESF_FLOWER_USER and ESF_FLOWER_PASSWORD "
                "(or pass --no-auth to run it without authentication, never on a network)"
            )
        # Flower splits FLOWER_BASIC_AUTH on ',' into several "user:password" entries: a password
        # "a,b" would make "user:a" and the bare string "b" valid credentials. A ':' in the user
        # name cannot be sent in Basic auth (RFC 7617).
        if "," in fs.user or ":" in fs.user or "," in fs.password.reveal():
            raise CommandError(
                "ESF_FLOWER_USER must not contain ',' or ':' and ESF_FLOWER_PASSWORD must not contain ',' "
                "(Flower would split the credentials there)"
            )
        # Through the environment, so the password is not visible in the process list.
        env["FLOWER_BASIC_AUTH"] = f"{fs.user}:{fs.password.reveal()}"
    return argv, env


def _flower(args: argparse.Namespace) -> int:
    fnd = load_foundation(args.app)
    argv, env = flower_argv(fnd, port=args.port, address=args.address, no_auth=args.no_auth)
    os.environ.update(env)
    fnd.celery.start(argv)
    return 0


def _health(args: argparse.Namespace) -> int:
    fnd = load_foundation(args.app)
    report = fnd.health()
    if args.json:
        print_json(report)
    else:
        print(f"status: {report['status']}  ready: {'yes' if report['ready'] else 'no'}")
        for name, item in report["services"].items():
            reason = f"  ({item['reason']})" if item.get("reason") else ""
            rest = {k: v for k, v in item.items() if k not in ("status", "reason")}
            print(f"  {name:<10} {item.get('status')}{reason}  {json.dumps(rest, default=str)}")
    return 0 if report["status"] != "down" else 1


def _up(args: argparse.Namespace) -> int:
    example = None
    if args.example is not None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", args.example):
            raise CommandError(f"--example: {args.example!r} is not an example name (e.g. orders)")
        example = f"examples.{args.example}.app"
    app = args.app or (f"{example}:make" if example else None) or os.environ.get("ESF_APP") or (
        "esf.demo:fnd" if args.demo else None)
    if app is None:
        raise CommandError("esf up needs --app pkg.module[:attribute] (or --demo, or --example NAME)")
    base = [sys.executable, "-m", "esf.cli", "--app", app]
    health = [f"--health-port={args.health_port}"] if args.health_port is not None else []
    procs = [
        subprocess.Popen([*base, "worker", "--loglevel=WARNING", *health]),
        subprocess.Popen([*base, "beat"]),
    ]
    stop = {"now": False}

    def _stop(_sig: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    started = time.monotonic()
    try:
        if args.demo:
            from esf.demo import run_demo

            run_demo(load_foundation(app), should_stop=lambda: stop["now"], duration=args.duration)
        elif example is not None:
            fnd = load_foundation(app)  # imports the example (the current directory is on the path)
            run_example = importlib.import_module(example).run_example
            run_example(fnd, should_stop=lambda: stop["now"], duration=args.duration)
        while not stop["now"] and all(p.poll() is None for p in procs):
            if args.duration is not None and time.monotonic() - started > args.duration:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
        print("esf: stopped")
    return 0
