"""`fleetlm` console script: each subcommand lives in its own module with a `register()`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# (module, doc) — each module defines register(subparsers) and sets a `func` default.
SUBCOMMAND_MODULES = (
    "orchestrator.cli.generate",
    "orchestrator.cli.config_cmd",
    "orchestrator.cli.serve",
    "orchestrator.cli.admin_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetlm", description="fleetlm LLM serving on Ray")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fleetlm: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader left (`fleetlm events | head`): stop quietly, as other Unix tools do;
        # stdout goes to /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
