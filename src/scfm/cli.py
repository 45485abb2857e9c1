"""Command line: ``scfm validate-config``, ``scfm embed``, ``scfm registry``."""

from __future__ import annotations

import argparse
import sys

import yaml

from scfm import __version__
from scfm.errors import ScfmConfigError, ScfmInputError
from scfm.registry._collect import KINDS


def _validate(args: argparse.Namespace) -> int:
    from scfm.config import load_config, validate_config, workflow_config

    # the loader the workflow uses: safe YAML, duplicate keys and yte templates refused; several
    # files are merged in order, as `snakemake --configfile a.yaml b.yaml` merges them
    try:
        if len(args.config) == 1:
            cfg = load_config(args.config[0])
        else:
            cfg = validate_config(workflow_config(args.config, {}))
    except ScfmConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    names = " + ".join(args.config)
    if args.resolved:
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
    else:
        print(f"{names}: valid ({len(cfg['datasets'])} datasets, {len(cfg['corpora'])} corpora)")
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


def _registry(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from scfm import registry
    from scfm.registry._format import format_lineage, format_records, format_show

    block: dict = {}
    config_path = Path(args.config) if args.config else Path("config/config.yaml")
    if args.config or config_path.exists():
        from scfm.config import load_config

        try:
            block = dict(load_config(config_path).get("registry") or {})
        except ScfmConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    for key in ("instance", "path", "settings_dir", "timeout"):
        if getattr(args, key) is not None:
            block[key] = getattr(args, key)
    settings = registry.RegistrySettings.from_config(block)
    try:
        if args.action == "list":
            result = registry.list_records(settings, kind=args.kind, limit=args.limit)
            text = format_records(result) if not args.json else None
        elif args.action == "show":
            result = registry.show(settings, args.ident)
            text = format_show(result) if not args.json else None
        else:
            result = registry.lineage(settings, args.ident)
            text = format_lineage(result) if not args.json else None
    except registry.ScfmRegistryNotFound as exc:
        print(f"scfm registry {args.action}: {exc}", file=sys.stderr)
        return 1
    except registry.ScfmRegistryError as exc:
        print(f"scfm registry {args.action}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str) if args.json else text)
    return 0


def _add_registry_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "registry",
        help="what the pipeline registered (lamindb): list, show <key>, lineage <key>",
        description="Query the data registry (docs/registry.md). It is found through the "
        "`registry` block of --config (default config/config.yaml when present) unless the "
        "options below say otherwise; needs pip install 'scfm[registry]'.",
    )
    r.add_argument("--config", help="config YAML whose `registry` block names the registry")
    r.add_argument("--path", help="directory of the embedded registry (default .scfm-registry)")
    r.add_argument("--instance", help="owner/name of a lab's lamindb instance")
    r.add_argument("--settings-dir", dest="settings_dir", help="LAMIN_SETTINGS_DIR to use")
    r.add_argument("--timeout", type=float, help="seconds to reach the registry")
    r.add_argument("--json", action="store_true", help="print JSON instead of text")
    actions = r.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("list", help="latest version of every registered file and corpus")
    ls.add_argument(
        "--kind",
        choices=KINDS,
        help="only records of this kind",
    )
    ls.add_argument("--limit", type=_positive_int, default=500, help="at most this many")
    for name, text in (
        ("show", "one record: where it is, the run that made it, inputs, versions, users"),
        ("lineage", "the tree of inputs and rules behind a record, down to the raw data"),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument("ident", metavar="KEY", help="key (path in the workdir) or uid")
    r.set_defaults(func=_registry)


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
    p.add_argument("config", nargs="+", help="config YAML file(s); several are merged in order")
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
    _add_registry_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
