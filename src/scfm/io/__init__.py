"""Getting data in: downloads, dataset sources, streaming h5ad I/O and standardization."""
