"""Inference with trained models: cell embeddings and masked-prediction evaluation.

``embed_anndata(adata, model_file)`` returns the cell embeddings of an AnnData,
``embed_file(model_file, input_h5ad, output_h5ad)`` writes them as ``obsm["X_<run>"]`` of an
h5ad (``scfm embed`` on the command line), ``masked_prediction(adata, model_file)`` scores the
model's pretraining objectives on new data. See docs/embed.md.
"""

from scfm.embed.cells import CellStream
from scfm.embed.embed import embed_anndata, embed_file
from scfm.embed.masked import masked_prediction
from scfm.embed.model_file import ModelFile, open_model_file

__all__ = [
    "CellStream",
    "ModelFile",
    "embed_anndata",
    "embed_file",
    "masked_prediction",
    "open_model_file",
]
