"""The fitted model as users call it: recommendations, neighbours and fold-in by original ids,
saved to and loaded from a ratings store.

:class:`RecommenderMixin` gives :class:`~dask_coded_als.CodedALS` its methods after ``fit`` (or
:meth:`~RecommenderMixin.load`). They read these fitted attributes:

``user_factors_``, ``item_factors_``
    U (m x d) and V (n x d); a score ``U[u] @ V[i]`` is an affinity for ranking.
``user_ids_``, ``item_ids_``, ``titles_``
    The original ids of the rows of U and V (ints or strings), and the items' titles or None.
``ratings_``
    The training ratings R (scipy.sparse CSR, as given, before weighting): a user's stored
    entries are the items they have seen. None after a fit on a dask array.
``weighting_``
    The fitted :class:`~dask_coded_als.recsys.weighting.Weighting`.

and the ``regularization`` parameter. Ids are compared in the dtype of the ids: with integer ids,
``"42"`` is 42.

Fold-in. A user who was not in the training data, with ratings r (a row over the items), gets the
vector ``u = w(r) H`` with ``H = V (V^T V + lam I)^-1`` and w the fitted weighting: the engine's
post-computation ``U = R H`` (:func:`dask_coded_als.als.factors_from_b`) applied to one more row,
so no refit is needed. When the fit was on a matrix with m >= n (D = R^T R, the engine's B is V),
this is exactly how U itself was formed: folding in a training user's own ratings gives back their
row of U. When m < n (B is U and V = R^T H), u is the least-squares fit of r to V, which equals a
training user's row of U at convergence.

Saving. :meth:`~RecommenderMixin.save` writes U, V, the parameters, the history and the
weighting into a ratings store (the layout ``fit`` writes: ``factors/`` of
:mod:`dask_coded_als.data.store`), in the store's order of users and items; a path where no store
exists gets a new one made from the training ratings, ids and titles
(:func:`dask_coded_als.data.ingest.ingest_matrix`). :meth:`~RecommenderMixin.load` reads it back,
with the store's ratings as the seen items.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from distributed import Client

from dask_coded_als import als
from dask_coded_als._util import check_int, jsonable
from dask_coded_als.data import store as stores
from dask_coded_als.errors import InputError
from dask_coded_als.recsys.batch import recommend_all, recommendations_table, top_n_rows
from dask_coded_als.recsys.recommend import IdIndex, as_records, similar_items
from dask_coded_als.recsys.weighting import Weighting

__all__ = ["RecommenderMixin"]

Records = list[dict[str, Any]]


def _many(ids: Any) -> bool:
    """Whether ``ids`` is several ids (a list, tuple or 1-D array) rather than one."""
    return isinstance(ids, list | tuple) or (isinstance(ids, np.ndarray) and ids.ndim == 1)


class RecommenderMixin:
    """Recommendations, neighbours, fold-in, save and load for a fitted factorization (see the
    module docstring for the attributes it reads)."""

    # -- what the methods share --------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "user_factors_"):
            raise InputError(f"this {type(self).__name__} is not fitted yet: call fit or load")

    def _index(self, kind: str) -> IdIndex:
        """The id index of users or items, built once per fitted model."""
        ids = self.user_ids_ if kind == "user" else self.item_ids_
        cached = self.__dict__.get(f"_{kind}_index")
        if cached is None or cached.ids is not ids:
            cached = IdIndex(ids, kind)
            self.__dict__[f"_{kind}_index"] = cached
        return cached

    def _seen(self, rows: np.ndarray | None, exclude_seen: bool) -> sp.csr_matrix | None:
        """The seen items of the users at ``rows`` (None: of all users), or None when not
        excluded."""
        if not exclude_seen:
            return None
        if self.ratings_ is None:
            raise InputError(
                "exclude_seen=True needs the training ratings, which a fit on a dask array does "
                "not keep; pass exclude_seen=False"
            )
        return self.ratings_ if rows is None else self.ratings_[rows]

    def _item_records(self, items: np.ndarray, scores: np.ndarray) -> Records:
        keep = items >= 0
        return as_records(self.item_ids_, items[keep], scores[keep], self.titles_)

    # -- recommendations -----------------------------------------------------------------------
    def recommend(
        self, user_ids: Any, n: int = 10, exclude_seen: bool = True
    ) -> Records | list[Records]:
        """The top-n items for a user, or for each of several users, by ``U[u] @ V.T``.

        Parameters
        ----------
        user_ids : id or list of ids
            One user id (int or str), or a list, tuple or 1-D array of them.
        n : int, default 10
            Items per user (fewer when fewer are left).
        exclude_seen : bool, default True
            Leave out the items the user rated in the training data.

        Returns
        -------
        list of dict, or a list of them per user (in the order given)
            ``{"item_id", "score", "title"}`` per item, best first (ties by item index);
            ``title`` is None without titles.

        Raises
        ------
        InputError
            ``unknown user id X``, a bad ``n``, a model that is not fitted.

        Examples
        --------
        >>> model.recommend(42, n=3)  # doctest: +SKIP
        [{'item_id': 318, 'score': 1.93, 'title': 'Shawshank Redemption, The (1994)'}, ...]
        >>> model.recommend([42, 7], n=3)  # doctest: +SKIP
        [[...], [...]]
        """
        self._check_fitted()
        n = check_int(n, "n", 1)
        many = _many(user_ids)
        rows = self._index("user").positions(user_ids if many else [user_ids])
        items, scores = top_n_rows(
            self.user_factors_[rows], self.item_factors_, self._seen(rows, exclude_seen), n
        )
        out = [self._item_records(i, s) for i, s in zip(items, scores, strict=True)]
        return out if many else out[0]

    def fold_in(self, ratings: Mapping[Any, float]) -> np.ndarray:
        """The vector of a user with these ratings, computed from the fitted factors.

        ``u = w(r) H``, ``H = V (V^T V + lam I)^-1``: see the module docstring.

        Parameters
        ----------
        ratings : mapping of item id to rating
            The user's ratings of known items.

        Returns
        -------
        numpy.ndarray of shape (d,)

        Raises
        ------
        InputError
            ``unknown item id X``, an item given twice, a rating that is not a finite number.
        """
        self._check_fitted()
        return self._fold_in(self._ratings_row(ratings))

    def _ratings_row(self, ratings: Mapping[Any, float]) -> sp.csr_matrix:
        if not isinstance(ratings, Mapping):
            raise InputError(f"ratings must be a mapping of item id to rating, not {ratings!r}")
        columns = self._index("item").positions(list(ratings))
        if len(set(columns.tolist())) != len(columns):
            raise InputError("ratings name an item twice")
        try:
            values = np.array([float(v) for v in ratings.values()], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("ratings must be numbers") from None
        if not np.isfinite(values).all():
            raise InputError("ratings must be finite numbers")
        order = np.argsort(columns)
        shape = (1, self.item_factors_.shape[0])
        return sp.csr_matrix(
            (values[order], columns[order], np.array([0, len(columns)])), shape=shape
        )

    def _fold_in(self, row: sp.csr_matrix) -> np.ndarray:
        weighted = self.weighting_.apply(row)
        U, _ = als.factors_from_b(
            weighted, self.item_factors_, transposed=False, regularization=self.regularization
        )
        return np.asarray(U)[0]

    def recommend_for_ratings(
        self, ratings: Mapping[Any, float], n: int = 10, exclude_seen: bool = True
    ) -> Records:
        """The top-n items for a user who was not in the training data, by fold-in.

        Parameters
        ----------
        ratings : mapping of item id to rating
            e.g. ``{318: 5.0, 858: 4.5}``.
        n : int, default 10
        exclude_seen : bool, default True
            Leave out the rated items.

        Returns
        -------
        list of dict
            As :meth:`recommend` for one user.

        Examples
        --------
        >>> model.recommend_for_ratings({318: 5.0, 858: 4.5}, n=2)  # doctest: +SKIP
        [{'item_id': 1221, 'score': 0.87, 'title': 'Godfather: Part II, The (1974)'}, ...]
        """
        self._check_fitted()
        n = check_int(n, "n", 1)
        row = self._ratings_row(ratings)
        u = self._fold_in(row)
        items, scores = top_n_rows(u[None, :], self.item_factors_, row if exclude_seen else None, n)
        return self._item_records(items[0], scores[0])

    # -- neighbours ----------------------------------------------------------------------------
    def similar_items(self, item_id: Any, n: int = 10) -> Records:
        """The n items nearest an item by cosine similarity of the rows of V (itself excluded).

        Returns ``{"item_id", "score", "title"}`` records, most similar first.
        """
        self._check_fitted()
        positions, scores = similar_items(
            self.item_factors_, self._index("item").position(item_id), n=n
        )
        return as_records(self.item_ids_, positions, scores, self.titles_)

    def similar_users(self, user_id: Any, n: int = 10) -> Records:
        """The n users nearest a user by cosine similarity of the rows of U (itself excluded).

        Returns ``{"user_id", "score"}`` records, most similar first.
        """
        self._check_fitted()
        positions, scores = similar_items(
            self.user_factors_, self._index("user").position(user_id), n=n
        )
        return as_records(self.user_ids_, positions, scores, kind="user")

    # -- every user at once --------------------------------------------------------------------
    def recommend_all(
        self,
        n: int = 10,
        exclude_seen: bool = True,
        client: Client | None = None,
        block_rows: int | None = None,
    ) -> pa.Table:
        """The top-n items of every user, computed block by block with dask.array
        (:func:`dask_coded_als.recsys.batch.recommend_all`).

        Returns
        -------
        pyarrow.Table
            ``user_id``, ``rank``, ``item_id``, ``score`` (and ``title``), one row per user and
            rank; :func:`dask_coded_als.recsys.batch.write_table` writes it as Parquet or CSV.
        """
        self._check_fitted()
        seen = self._seen(None, exclude_seen)
        items, scores = recommend_all(
            self.user_factors_, self.item_factors_, seen, n, client, block_rows
        )
        return recommendations_table(items, scores, self.user_ids_, self.item_ids_, self.titles_)

    # -- persistence ---------------------------------------------------------------------------
    def save(
        self, store: stores.RatingsStore | str | os.PathLike, attrs: Mapping[str, Any] | None = None
    ) -> None:
        """Write the fitted model into a ratings store.

        Parameters
        ----------
        store : RatingsStore or path
            A store with the model's users and items (in any order): the factors are written in
            the store's order. A path where nothing exists gets a new store of the training
            ratings, ids and titles.
        attrs : mapping, optional
            More JSON metadata stored with the factors (e.g. the split they were fitted on).

        Raises
        ------
        InputError
            A store whose users or items are not the model's; a path that exists but is not a
            store.
        """
        from dask_coded_als.data.ingest import ingest_matrix

        self._check_fitted()
        path = store.path if isinstance(store, stores.RatingsStore) else Path(store)
        if not path.exists():
            if self.ratings_ is None:
                raise InputError(f"{path}: no store, and no training ratings to make one from")
            ingest_matrix(
                self.ratings_,
                path,
                user_ids=self.user_ids_,
                item_ids=self.item_ids_,
                titles=self.titles_,
            )
        st = stores.open_store(path)
        users = self._order(st.user_ids, "user", st)
        items = self._order(st.item_ids, "item", st)
        meta = {
            "estimator": {"class": type(self).__name__, "parameters": self.get_params()},
            "weighting": self.weighting_.to_attrs(),
            "history": getattr(self, "history_", []),
            **dict(attrs or {}),
        }
        idf = self.weighting_.idf
        stores.write_factors(
            st,
            self.user_factors_[users],
            self.item_factors_[items],
            jsonable(meta),
            None if idf is None else {"idf": idf[items]},
        )

    def _order(self, ids: np.ndarray, kind: str, st: stores.RatingsStore) -> np.ndarray:
        """The model's rows in the order of the store's ``ids``."""
        own = self.user_ids_ if kind == "user" else self.item_ids_
        try:
            rows = self._index(kind).positions(ids)
        except InputError as exc:
            raise InputError(
                f"{st.path}: the store's {kind}s are not the model's ({exc})"
            ) from None
        if len(own) != len(ids) or len(np.unique(rows)) != len(rows):
            raise InputError(f"{st.path}: the store's {kind}s are not the model's")
        return rows

    @classmethod
    def load(cls, store: stores.RatingsStore | str | os.PathLike) -> Any:
        """A fitted model from the factors in a ratings store, without refitting.

        The parameters are those saved with the factors (for factors written without them, the
        defaults, with the store's recorded ``regularization`` when there is one); the seen
        items are the store's ratings.

        Examples
        --------
        >>> from dask_coded_als import CodedALS
        >>> model = CodedALS.load("ml.zarr")  # doctest: +SKIP
        >>> model.similar_items(1, n=5)  # doctest: +SKIP
        """
        st = store if isinstance(store, stores.RatingsStore) else stores.open_store(store)
        U, V, attrs = stores.read_factors(st)
        names = set(cls().get_params())
        saved = attrs.get("estimator", {}).get("parameters")
        if not isinstance(saved, Mapping):  # factors of an older fit: what it recorded
            saved = attrs.get("parameters") if isinstance(attrs.get("parameters"), Mapping) else {}
        params = {k: v for k, v in saved.items() if k in names}
        if isinstance(params.get("partition"), list):  # JSON has no tuples
            params["partition"] = tuple(params["partition"])
        model = cls(**params)
        model.user_factors_ = U
        model.item_factors_ = V
        model.n_factors_ = U.shape[1]
        model.user_ids_ = st.user_ids
        model.item_ids_ = st.item_ids
        model.titles_ = st.titles
        model.ratings_ = stores.ratings_matrix(st)
        model.weighting_ = Weighting.from_attrs(
            attrs.get("weighting"), stores.read_factor_array(st, "idf")
        )
        model.history_ = list(attrs.get("history", []))
        return model
