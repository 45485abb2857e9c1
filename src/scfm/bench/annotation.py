"""Cell-type annotation from an embedding, trained on some batches or donors and tested on others.

Group-wise cross-validation (scikit-learn ``GroupKFold``): every fold trains a classifier on the
cells of the other groups and predicts the held-out groups, so each cell is predicted exactly
once by a model that never saw its batch. The pooled predictions are scored with accuracy and
macro-F1 (the unweighted mean of per-label F1 over every label in the truth or the predictions).
A label missing from a fold's training groups cannot be predicted there: its cells count as
errors, as they would in a real transfer of labels to a new batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm.errors import ScfmInputError

CLASSIFIERS = ("logreg", "knn")


def annotation_scores(
    features: Any,
    labels: Any,
    groups: Any,
    *,
    classifiers: Sequence[str] = CLASSIFIERS,
    n_splits: int = 5,
    k: int = 15,
    seed: int = 0,
    max_iter: int = 1000,
    path: str = "<features>",
) -> pd.DataFrame:
    """Cross-group annotation accuracy and macro-F1 of each classifier on ``features``.

    Parameters
    ----------
    features
        (n_cells, d) dense array or scipy sparse matrix (never densified).
    labels
        n_cells cell types.
    groups
        n_cells batches or donors to split by; folds never split a group.
    classifiers
        ``"logreg"``: standardised features (without centring when sparse), then multinomial
        logistic regression. ``"knn"``: k-nearest-neighbour vote on the features as given.
    n_splits
        Folds, at most the number of groups.
    k
        Neighbours for ``"knn"`` (fewer if a fold has fewer training cells).
    seed
        Random state of the logistic regression.
    max_iter
        Iterations of the logistic regression solver.
    path
        Named in error messages.

    Returns
    -------
    One row per classifier: ``classifier, accuracy, macro_f1, n_folds, n_test, n_train_mean``.
    """
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import GroupKFold

    x = _check_features(features, path)
    y = _check_strings(labels, "labels", x.shape[0], path)
    g = _check_strings(groups, "groups", x.shape[0], path)
    unknown = sorted(set(classifiers) - set(CLASSIFIERS))
    if unknown:
        raise ValueError(f"unknown classifier(s) {unknown}; choose from {list(CLASSIFIERS)}")
    n_groups = len(np.unique(g))
    if n_groups < 2:
        raise ScfmInputError(
            path,
            "groups",
            f"{n_groups} group",
            "annotation needs at least two batches/donors to split by",
        )

    folds = list(GroupKFold(n_splits=min(n_splits, n_groups)).split(x, y, g))
    rows = []
    for name in classifiers:
        pred = np.empty(len(y), dtype=object)
        for train, test in folds:
            pred[test] = _fit_predict(name, x[train], y[train], x[test], k, seed, max_iter)
        pred = pred.astype(str)
        rows.append(
            {
                "classifier": name,
                "accuracy": float(accuracy_score(y, pred)),
                "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
                "n_folds": len(folds),
                "n_test": len(y),
                "n_train_mean": float(np.mean([len(train) for train, _ in folds])),
            }
        )
    return pd.DataFrame(rows)


def _fit_predict(
    name: str,
    x_train: Any,
    y_train: np.ndarray,
    x_test: Any,
    k: int,
    seed: int,
    max_iter: int,
) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(y_train)
    if len(classes) == 1:  # neither classifier fits a single class; it is the only answer
        return np.full(x_test.shape[0], classes[0], dtype=object)
    if name == "logreg":
        model = make_pipeline(
            StandardScaler(with_mean=not sp.issparse(x_train)),
            LogisticRegression(max_iter=max_iter, random_state=seed),
        )
    else:
        model = KNeighborsClassifier(n_neighbors=min(k, x_train.shape[0]))
    return model.fit(x_train, y_train).predict(x_test)


def _check_features(features: Any, path: str) -> Any:
    if sp.issparse(features):
        x = sp.csr_matrix(features)
        finite = np.isfinite(x.data).all()
    else:
        x = np.asarray(features)
        finite = np.isfinite(x).all()
    if x.ndim != 2:
        raise ScfmInputError(path, "features", f"shape {x.shape}", "(n_cells, n_features)")
    if not finite:
        raise ScfmInputError(path, "features", "contain NaN or inf", "finite values")
    return x


def _check_strings(values: Any, field: str, n: int, path: str) -> np.ndarray:
    s = pd.Series(np.asarray(values, dtype=object))
    if len(s) != n:
        raise ScfmInputError(path, field, f"{len(s)} values for {n} cells", "one per cell")
    missing = int(s.isna().sum())
    if missing:
        raise ScfmInputError(path, field, f"{missing} of {n} missing", "a value for every cell")
    return s.astype(str).to_numpy()
