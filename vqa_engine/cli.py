"""`python -m vqa_engine COMMAND`: the batch side of VQA Curator.

Each command is a thin handler over the same engine the dashboard uses. Errors of ours
(`VQAError`) end the process with exit code 1 and their message on stderr; usage errors
exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from vqa_engine.errors import VQAError

Handler = Callable[[argparse.Namespace], int]


def _cmd_migrate(args: argparse.Namespace) -> int:
    from db.engine import database_url, open_database

    database = open_database()
    database.close()
    print(f"schema up to date: {database_url().split('@')[-1]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vqa_engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(handler=_cmd_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except VQAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
