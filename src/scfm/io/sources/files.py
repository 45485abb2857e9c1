"""Sources ``local`` (a path) and ``url`` (any h5ad / 10x h5 / Matrix Market URL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from scfm.io.download import download_configured, hash_file
from scfm.io.formats import guess_format
from scfm.paths import check_input, check_outputs_not_inputs


def fetch(name: str, cfg: dict[str, Any], outdir: Path, *, chunk_cells: int) -> dict[str, Any]:
    """Verify a local file, or download a URL into ``outdir``; see :mod:`scfm.io.sources`."""
    if cfg["source"] == "local":
        given = Path(cfg["path"]).expanduser()
        # before resolve(): it raises on a symlink loop, and a FIFO or device would make the
        # reader hang (or read forever) instead of failing
        check_input(
            given,
            f"datasets.{name}.path",
            "a regular h5ad, 10x h5 or Matrix Market file, or a 10x directory",
            directory=True,
        )
        path = given.resolve()
        check_outputs_not_inputs({"manifest": outdir / "manifest.json"}, {"local": path})
        fmt = guess_format(path, cfg.get("format", "auto"))
        # Matrix Market comes as a 10x directory; hash the matrix file itself.
        record = {
            "path": str(path),
            "url": None,
            "size": path.stat().st_size,
            "sha256": hash_file(path) if path.is_file() else None,
        }
        return {
            "format": fmt,
            "matrices": [record],
            "defaults": _defaults(fmt),
            "source_info": {"path": str(path)},
        }
    url = cfg["url"]
    filename = Path(unquote(urlparse(url).path)).name or f"{name}.h5ad"
    fmt = guess_format(Path(filename), cfg.get("format", "auto"))
    record = download_configured(url, outdir / filename, cfg)
    return {
        "format": fmt,
        "matrices": [record],
        "defaults": _defaults(fmt),
        "source_info": {"url": url},
    }


def _defaults(fmt: str) -> dict[str, Any]:
    # 10x files carry Ensembl IDs and their own gene names; keep those names as symbols.
    return {"genes": {"symbol_column": "gene_symbol_10x"}} if fmt in ("10x_h5", "mtx") else {}
