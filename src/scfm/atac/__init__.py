"""scATAC-seq: fragment files, QC, genome bins, peaks, gene activity."""
