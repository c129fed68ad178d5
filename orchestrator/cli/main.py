"""`fleetlm` console script: each subcommand lives in its own module with a `register()`."""

from __future__ import annotations

import argparse
import importlib
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


if __name__ == "__main__":
    sys.exit(main())
