"""Command line: ``scfm validate-config``, ``scfm embed`` (more come with later stages)."""

from __future__ import annotations

import argparse
import sys

import yaml

from scfm import __version__
from scfm.errors import ScfmConfigError, ScfmInputError


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


def _embed(args: argparse.Namespace) -> int:
    import logging

    from scfm.embed import embed_file

    if not logging.getLogger().handlers:  # show the missing-gene warning, not INFO chatter
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        record = embed_file(
            args.model,
            args.input,
            args.output,
            key=args.key,
            batch_size=args.batch_size,
            device=args.device,
            chunk_cells=args.chunk_cells,
            gene_stats=args.gene_stats,
        )
    except (ScfmInputError, ScfmConfigError) as exc:
        print(f"scfm embed: {exc}", file=sys.stderr)
        return 2
    print(
        f"{record['output']}: {record['n_cells']} cells x {record['dim']} dims in "
        f"obsm[{record['key']!r}] ({record['device']}); {record['n_genes_missing']} expressed "
        f"genes missing from the vocabulary ({record['missing_count_fraction']:.2%} of counts)"
    )
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not an integer >= 1")
    return value


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
    e = sub.add_parser(
        "embed",
        help="write cell embeddings of an h5ad with a trained model.pt",
        description="Embed the cells of an h5ad (raw counts in X, gene IDs as var_names) and "
        "write obs + obsm[KEY] to OUTPUT (no genes: join to the input by obs_names).",
    )
    e.add_argument("--model", required=True, help="model.pt written by training")
    e.add_argument("--input", required=True, help="h5ad with raw integer counts in X")
    e.add_argument("--output", required=True, help="h5ad to write (atomically)")
    e.add_argument("--key", help="obsm key (default X_<run>, the model's directory name)")
    e.add_argument("--batch-size", type=_positive_int, default=256, help="cells per batch")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument("--chunk-cells", type=_positive_int, default=20000, help="rows read at a time")
    e.add_argument(
        "--gene-stats", help="the training corpus' gene_stats.tsv (rank tokenizers only)"
    )
    e.set_defaults(func=_embed)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
