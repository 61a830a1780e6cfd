"""Weighting of the ratings before the factorization: ``none``, ``binary`` and ``bm25``.

The weighting is applied to R before D = R^T R (or R R^T) is formed, so the coded scheme sees an
ordinary matrix and nothing in the engine changes; the post-computation ``U = R_w H`` and the
fold-in of new users use the weighted ratings too. Which entries a user has *seen* (left out of
their recommendations) does not depend on the weighting: it is every stored entry of R.

``none``
    Ratings as given. For explicit ratings (stars) where the value says how much a user liked an
    item: PureSVD on MovieLens-style data.
``binary``
    Every stored entry becomes 1 (a stored 0 too). For implicit feedback where the value is
    not a preference: plays, clicks, purchases, or explicit ratings when only *whether* a user
    rated an item should count (which items people choose to rate carries most of the signal
    for top-n ranking).
``bm25``
    The BM25 weighting of information retrieval with users as documents and items as terms, as
    the ``implicit`` library's ``bm25_weight`` computes it for a users x items matrix:

    ``w_ui = r_ui (k1 + 1) / (k1 L_u + r_ui) * idf_i``, ``idf_i = log(m) - log(1 + m_i)``,
    ``L_u = (1 - b) + b s_u / mean(s)``

    with m users, m_i the users who rated item i, s_u the sum of user u's ratings,
    ``k1 = 100`` and ``b = 0.8`` (implicit's defaults). Popular items weigh less (idf) and a
    user's ratings weigh less the more the user rated (L_u): for implicit counts with a strong
    popularity bias (listening counts, clicks), where the unweighted factorization would mostly
    rediscover popularity. The counts must be >= 0. An item rated by every user gets a slightly
    negative idf (``log(m / (m + 1))``), as in implicit. On a random 200 x 70 count matrix with
    a stored 0, :meth:`Weighting.apply` gave exactly what implicit 0.7.3's
    ``bm25_weight(R, K1=100, B=0.8)`` gives (compared once by hand; the tests check the formula
    against a dense numpy reference).

The statistics of ``bm25`` (idf per item, the mean user sum) come from the training ratings and
are kept with the fitted model, so that a new user's ratings are weighted as the training users'
were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from dask_coded_als.errors import InputError

__all__ = ["BM25_B", "BM25_K1", "WEIGHTINGS", "Weighting", "check_weighting", "fit_weighting"]

#: The values of ``weighting=``.
WEIGHTINGS = ("none", "binary", "bm25")
#: BM25's saturation k1 and length normalization b: the defaults of implicit's ``bm25_weight``.
BM25_K1 = 100.0
BM25_B = 0.8


def check_weighting(name: Any) -> str:
    """``name`` if it is one of :data:`WEIGHTINGS`, else an InputError naming ``weighting=``."""
    if not isinstance(name, str) or name not in WEIGHTINGS:
        raise InputError(f"weighting must be one of {WEIGHTINGS}, got {name!r}")
    return name


@dataclass(frozen=True)
class Weighting:
    """A weighting with the statistics it took from the training ratings.

    Create it with :func:`fit_weighting`; :meth:`apply` weighs rows of users (training users or
    new ones).

    Attributes
    ----------
    name : str
        One of :data:`WEIGHTINGS`.
    idf : numpy.ndarray or None
        ``bm25``: the weight of every item, ``log(m) - log(1 + m_i)``.
    average_length : float or None
        ``bm25``: the mean over the training users of the sum of their ratings.
    k1, b : float
        ``bm25``'s parameters.
    """

    name: str = "none"
    idf: np.ndarray | None = None
    average_length: float | None = None
    k1: float = BM25_K1
    b: float = BM25_B

    def apply(self, R: Any) -> Any:
        """Weigh R (rows are whole users: a user's ratings are all in one row).

        Parameters
        ----------
        R : ndarray or scipy.sparse matrix, shape (rows, n_items)
            Ratings; in a dense array, 0 is a missing rating.

        Returns
        -------
        R itself for ``none``; a new ``scipy.sparse.csr_matrix`` (float64) otherwise, with the
        stored entries of R.

        Examples
        --------
        >>> import scipy.sparse as sp
        >>> binary = fit_weighting("binary", sp.csr_matrix([[5.0, 0.0, 2.0]]))
        >>> binary.apply([[0.0, 3.0, 1.0]]).toarray()
        array([[0., 1., 1.]])
        """
        if self.name == "none":
            return R
        W = sp.csr_matrix(R, dtype=np.float64, copy=True)
        W.sum_duplicates()
        if self.name == "binary":
            W.data[:] = 1.0
            return W
        _check_counts(W)
        if self.idf is None or W.shape[1] != self.idf.shape[0]:
            raise InputError(f"ratings have {W.shape[1]} items, the weighting was fitted on other")
        rows = np.repeat(np.arange(W.shape[0]), np.diff(W.indptr))
        lengths = np.asarray(W.sum(axis=1)).ravel()
        norm = (1.0 - self.b) + self.b * lengths / self.average_length
        W.data = W.data * (self.k1 + 1.0) / (self.k1 * norm[rows] + W.data) * self.idf[W.indices]
        return W

    def to_attrs(self) -> dict[str, Any]:
        """The JSON part of the weighting (``idf`` is stored as an array beside it)."""
        return {
            "name": self.name,
            "k1": self.k1,
            "b": self.b,
            "average_length": self.average_length,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any] | None, idf: np.ndarray | None) -> Weighting:
        """The inverse of :meth:`to_attrs` (None: ``none``, as factors written without one)."""
        if not attrs:
            return cls()
        name = check_weighting(attrs.get("name"))
        if name == "bm25" and (idf is None or attrs.get("average_length") is None):
            raise InputError("the stored bm25 weighting misses its item weights")
        return cls(
            name=name,
            idf=None if idf is None else np.asarray(idf, dtype=np.float64),
            average_length=attrs.get("average_length"),
            k1=float(attrs.get("k1", BM25_K1)),
            b=float(attrs.get("b", BM25_B)),
        )


def _check_counts(W: sp.csr_matrix) -> None:
    if W.nnz and W.data.min() < 0:
        raise InputError("weighting='bm25' needs ratings >= 0 (counts or stars)")


def fit_weighting(name: str, R: Any) -> Weighting:
    """The weighting ``name`` with the statistics of the training ratings R.

    Parameters
    ----------
    name : {"none", "binary", "bm25"}
    R : ndarray or scipy.sparse matrix, shape (m, n)
        The training ratings (users x items); a dask array only with ``"none"``.

    Returns
    -------
    Weighting

    Raises
    ------
    InputError
        An unknown name; for ``bm25`` a negative rating or ratings that sum to 0; a dask array
        with a weighting other than ``none``.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> w = fit_weighting("bm25", sp.csr_matrix([[1.0, 0.0], [1.0, 1.0]]))
    >>> w.idf.round(3).tolist(), w.average_length
    ([-0.405, 0.0], 1.5)
    """
    check_weighting(name)
    if name == "none":
        return Weighting()
    if hasattr(R, "dask"):
        raise InputError(
            f"weighting={name!r} needs R in memory (numpy or scipy.sparse), not a dask array"
        )
    if name == "binary":
        return Weighting(name="binary")
    W = sp.csr_matrix(R, dtype=np.float64)
    W.sum_duplicates()
    _check_counts(W)
    m = W.shape[0]
    lengths = np.asarray(W.sum(axis=1)).ravel()
    average = float(lengths.mean())
    if not average > 0:
        raise InputError("weighting='bm25' needs ratings that do not all sum to 0")
    raters = np.bincount(W.indices, minlength=W.shape[1])
    idf = np.log(m) - np.log1p(raters)
    return Weighting(name="bm25", idf=idf, average_length=average)
