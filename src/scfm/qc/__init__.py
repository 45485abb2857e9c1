"""Quality control of standardized datasets."""

from scfm.qc.rna import qc_rna

__all__ = ["qc_rna"]
