"""Command line: ``scfm validate-config`` (more subcommands come with later stages)."""

from __future__ import annotations

import argparse
import sys

import yaml

from scfm import __version__
from scfm.errors import ScfmConfigError


def _validate(args: argparse.Namespace) -> int:
    from scfm.config import load_config

    try:
        cfg = load_config(args.config)
    except ScfmConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.resolved:
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
    else:
        print(
            f"{args.config}: valid ({len(cfg['datasets'])} datasets, {len(cfg['corpora'])} corpora)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scfm`` command."""
    parser = argparse.ArgumentParser(prog="scfm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"scfm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate-config", help="check a config file against the schema")
    p.add_argument("config", help="path to a config YAML")
    p.add_argument(
        "--resolved", action="store_true", help="print the config with every default filled in"
    )
    p.set_defaults(func=_validate)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
