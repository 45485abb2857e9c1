"""Corpora from the registry: shards another working directory built, reused as they are.

A ``corpora.<name>`` block with ``source: lamindb`` names, per tokenizer, a registered corpus
collection (``results/corpus/<corpus>/<tokenizer>``, as ``scfm registry list --kind corpus``
shows it). Its vocabulary (and, for rank tokens, gene statistics) are fetched to
``results/corpus/<name>/`` and its shards to ``results/corpus/<name>/<tokenizer>/`` at the
relative paths the registered manifest gives, so the training and embedding rules read them like
a corpus built here. Every file is checked against its registered hash (by the registry) and
every shard against the sha256 in the manifest; a tokenizer whose parameters differ from this
config's ``tokenizers.<tokenizer>`` or a vocabulary with another hash is an error.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any

from scfm.errors import ScfmInputError
from scfm.io.sources.lamindb import link_copy
from scfm.provenance import created
from scfm.shard.manifest import CorpusManifest
from scfm.tokenize.tokenizers import TokenizerConfig
from scfm.tokenize.vocab import Vocab

log = logging.getLogger(__name__)

#: Corpus-level files of a registered corpus (beside ``<tokenizer>/manifest.json``).
CORPUS_FILES = ("vocab.tsv", "gene_stats.tsv")
#: Where a corpus' shards are, relative to its manifest (scfm.shard.merge_manifests).
SHARDS_DIR = "datasets"


def _fetch(
    corpus: str, tokenizer: str, cfg: dict[str, Any], *, shards: bool = True
) -> tuple[dict[str, Any], CorpusManifest]:
    """The registry's record of ``corpora.<corpus>.collections.<tokenizer>`` and its manifest."""
    from scfm.registry import RegistrySettings, ScfmRegistryNotFound, fetch_corpus

    settings = RegistrySettings.from_config(cfg.get("registry"))
    field = f"corpora.{corpus}.collections.{tokenizer}"
    ident = cfg["collections"][tokenizer]
    try:
        record = fetch_corpus(settings, ident, shards=shards)
    except ScfmRegistryNotFound as exc:
        raise ScfmInputError(
            settings.describe(),
            field,
            str(exc),
            "the key or uid of a registered corpus (`scfm registry list --kind corpus`)",
        ) from None
    return record, CorpusManifest.read(record["manifest"]["path"])


def fetch_corpus_file(corpus: str, cfg: dict[str, Any], name: str, out: str | Path) -> Path:
    """Copy ``vocab.tsv`` or ``gene_stats.tsv`` of a registered corpus to ``out``.

    Taken from the first of the corpus' collections that has it (each collection of one
    corpus shares the vocabulary, which the shard rule checks; gene statistics come with the
    rank-token collections).
    """
    if name not in CORPUS_FILES:
        raise ValueError(f"{name!r}: expected one of {CORPUS_FILES}")
    tried = []
    for tokenizer in cfg["collections"]:
        record, manifest = _fetch(corpus, tokenizer, cfg, shards=False)
        vocab_key = posixpath.normpath(posixpath.join(record["key"], manifest.vocab_path))
        key = posixpath.join(posixpath.dirname(vocab_key), name)
        if key in record["files"]:
            link_copy(Path(record["files"][key]["path"]), Path(out))
            log.info("%s: %s from the registered corpus %s (%s)", corpus, name, record["key"], key)
            return Path(out)
        tried.append(record["key"])
    why = "rank tokens need it" if name == "gene_stats.tsv" else "its shards index it"
    raise ScfmInputError(
        ", ".join(tried),
        f"corpora.{corpus}.collections",
        f"no collection of the registered corpus has {name} ({why})",
        f"{name} registered with the corpus (rebuild and register it with this scfm)",
    )


def fetch_registered_corpus(
    corpus: str,
    tokenizer: str,
    cfg: dict[str, Any],
    *,
    tokenizer_cfg: dict[str, Any],
    vocab_path: str | Path,
    manifest_out: str | Path,
) -> CorpusManifest:
    """Fetch the shards of ``corpora.<corpus>.collections.<tokenizer>``; write its manifest.

    The shards land under ``manifest_out``'s directory at the registered manifest's relative
    paths (``datasets/<dataset>/<split>/shard-*.arrow``), written to a temporary directory
    that is renamed when every shard is verified; the manifest is written last. Returns it.
    """
    record, manifest = _fetch(corpus, tokenizer, cfg)
    where = record["key"]
    ours = TokenizerConfig.from_config(tokenizer_cfg).params()
    theirs = dict(manifest.tokenizer_params)
    for key in sorted(ours.keys() | theirs.keys()):
        if ours.get(key) != theirs.get(key):
            raise ScfmInputError(
                where,
                f"tokenizer_params.{key}",
                f"the registered corpus was tokenized with {key}={theirs.get(key)!r}, "
                f"tokenizers.{tokenizer} says {ours.get(key)!r}",
                f"tokenizers.{tokenizer} as the corpus was built ({json.dumps(theirs)})",
            )
    vocab = Vocab.read(vocab_path)
    if vocab.hash != manifest.vocab_hash:
        raise ScfmInputError(
            where,
            "vocab_hash",
            f"{manifest.vocab_hash} differs from {vocab_path} ({vocab.hash})",
            "every collection of a registered corpus to share one vocabulary",
        )
    out_dir = Path(manifest_out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".registered-", dir=out_dir))
    try:
        for entry in manifest.shards:
            rel = _relative(entry.path, where)
            key = posixpath.join(where, rel)
            if key not in record["files"]:
                raise ScfmInputError(
                    where,
                    "shards",
                    f"{rel} is in the manifest but not in the collection",
                    "every shard of the manifest registered with the corpus",
                )
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            copied = link_copy(Path(record["files"][key]["path"]), dest)  # hashes the copy
            if copied["sha256"] != entry.sha256:
                raise ScfmInputError(
                    key, "sha256", "the shard differs from its manifest entry", entry.sha256
                )
        for key, meta in record["files"].items():  # per-dataset manifests, for provenance
            rel = posixpath.relpath(key, where)
            if rel.startswith(SHARDS_DIR + "/") and rel.endswith("/manifest.json"):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                link_copy(Path(meta["path"]), tmp / rel)
        if (out_dir / SHARDS_DIR).exists():
            shutil.rmtree(out_dir / SHARDS_DIR)
        (tmp / SHARDS_DIR).rename(out_dir / SHARDS_DIR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    local = manifest.replace(
        corpus=corpus,
        tokenizer=tokenizer,
        vocab_path=posixpath.relpath(Path(vocab_path).resolve(), out_dir.resolve()),
        created=created(),
        registry={
            "uid": record["uid"],
            "key": record["key"],
            "manifest_uid": record["manifest"]["uid"],
            "where": cfg.get("registry"),
            "run": record.get("run"),
        },
    )
    local.write(manifest_out)
    log.info(
        "%s/%s: %d shards of the registered corpus %s (uid %s)",
        corpus,
        tokenizer,
        len(manifest.shards),
        record["key"],
        record["uid"],
    )
    return local


def _relative(path: str, where: str) -> str:
    """A shard path of the manifest, which must stay below ``datasets/`` of its directory."""
    rel = posixpath.normpath(path)
    if not rel.startswith(SHARDS_DIR + "/"):
        raise ScfmInputError(
            where,
            "shards.path",
            f"{path!r} is not below the corpus' {SHARDS_DIR}/ directory",
            f"{SHARDS_DIR}/<dataset>/<split>/<shard> (a corpus built by scfm)",
        )
    return rel
