"""How each mode and protocol spreads one ALS iteration over the workers.

A scheme says what each worker stores (:meth:`shard`), which exchanges a round makes and what
the master computes between them; :class:`dask_coded_als.engine.master.Master` runs them all
with one round loop. A round is ``gram_quantities`` (F = B^T B and S = B^T D B, from which the
objective and the update matrix G follow), then ``update`` (B+ = E G) or, in the last round,
``post`` (H = B (F + lam I)^-1 for the other factor).

``CodedFast`` (``mode="coded", protocol="fast"``)
    One exchange per iteration: worker w returns ``D~(x_w) f_R(B, x_w)``; the master decodes
    E = D B from the first K = h^2 + h - 1 answers and forms F, S and E G itself. Those are
    O(l d^2) next to the workers' O(l^2 d / h^2) each (the paper's Appendix A), far below the
    cost of another exchange.
``CodedPaper`` (``protocol="paper"``)
    The paper's Sec. III-C as written: step 1 returns ``D~ f_R(B)`` and ``f_L(B)^T f_R(B)``
    together, step 2 ``f_L(B)^T f_R(E)``, step 3 ``f_R(E) G``; the post-computation
    ``H = B (F + lam I)^-1`` is coded too.
``RowBlocks`` (``mode="uncoded"`` and ``"replication"``)
    D split by rows; ``uncoded`` waits for every block, ``replication`` keeps ``s + 1`` copies
    of each block and takes the first. The master forms F, S, G and E G as in the fast protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_coded_als.coding import theory
from dask_coded_als.coding.checking import locate_wrong_answers
from dask_coded_als.coding.codes import ALSCode, worker_product
from dask_coded_als.coding.points import choose_points
from dask_coded_als.engine import tasks
from dask_coded_als.engine.exchange import Exchange, FirstCopies, Scatter, Threshold
from dask_coded_als.errors import InputError

__all__ = ["CodedFast", "CodedPaper", "RowBlocks", "make_scheme"]


#: What a shard that is not finite means for the user.
NOT_FINITE = "the Gram matrix of R is not finite in {dtype}; rescale R"


def is_source(D: Any) -> bool:
    """Whether ``gram`` is a *source*: an object the workers open themselves (``open_array()``)."""
    return callable(getattr(D, "open_array", None))


def _checked_shard(shard: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(shard)):
        raise InputError(NOT_FINITE.format(dtype=shard.dtype))
    return shard


@dataclass(frozen=True)
class CodedShard:
    """Builds worker w's coded shard from D, where D is: at the master, or on the worker itself
    (it pickles to the code's parameters)."""

    code: ALSCode
    dtype: str

    def __call__(self, D: Any, w: int) -> np.ndarray:
        try:
            shard = self.code.data_shard(D, w, self.dtype)
        except ValueError:  # a strip of a D read from disk is not finite
            raise InputError(NOT_FINITE.format(dtype=self.dtype)) from None
        return _checked_shard(shard)


@dataclass(frozen=True)
class RowBlock:
    """Builds worker w's block of rows of D (the baselines)."""

    edges: tuple[int, ...]
    block_of: tuple[int, ...]
    dtype: str

    def __call__(self, D: Any, w: int) -> np.ndarray:
        b = self.block_of[w]
        return _checked_shard(np.asarray(D[self.edges[b] : self.edges[b + 1]], dtype=self.dtype))


def _post_matrix(B: np.ndarray, F: np.ndarray, lam: float) -> np.ndarray:
    """H = B (F + lam I)^-1, eq. (29) with the ridge."""
    return np.linalg.solve(F + lam * np.eye(F.shape[0]), B.T).T


class _Scheme:
    """What every scheme shares: D (an array, or a source the workers open), its size, the
    padding of the factor, how a shard is built (``builder``)."""

    builder: Any

    def __init__(self, master: Any, D: Any, padded: int) -> None:
        self.master = master
        self.settings = master.settings
        if isinstance(D, np.ndarray) and not np.all(np.isfinite(D)):
            raise InputError(NOT_FINITE.format(dtype=D.dtype))
        self.D = D
        self.source = D if is_source(D) else None
        self.size = int(D.shape[0])
        self.padded = padded
        self.lam = float(self.settings.regularization)
        # Products in float32 round at its epsilon: the convergence test counts that as noise.
        self.product_eps = float(np.finfo(self.settings.dtype).eps)

    def shard(self, w: int) -> np.ndarray:
        """Worker w's shard, built here (from D itself, or from the source opened here)."""
        if self.source is not None and self.D is self.source:
            self.D = self.source.open_array()  # the master reads D block by block
        return self.builder(self.D, w)

    def pad(self, B: np.ndarray) -> np.ndarray:
        # Zero padding is exact: the padded rows of every factor stay zero.
        return np.pad(B, ((0, self.padded - self.size), (0, 0))) if self.padded > B.shape[0] else B

    def unpad(self, B: np.ndarray) -> np.ndarray:
        return B[: self.size]

    def shard_future(self, w: int) -> Any:
        return self.master.shards[w]

    def update(self, t: int, state: dict, G: np.ndarray) -> np.ndarray:
        with self.master.master_time():
            return state["E"] @ G

    def post(self, t: int, state: dict, B: np.ndarray, F: np.ndarray) -> np.ndarray:
        with self.master.master_time():
            return self.unpad(_post_matrix(B, F, self.lam))

    def _master_side(
        self, B: np.ndarray, E: np.ndarray, decode_error: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        with self.master.master_time():
            return B.T @ B, B.T @ E, {"E": E, "decode_error": decode_error}


class CodedFast(_Scheme):
    """One coded exchange per iteration; F, S, G and E G at the master."""

    def __init__(self, master: Any, D: Any) -> None:
        s = master.settings
        p, r = s.partition
        self.points = s.points or choose_points(
            s.n_workers, theory.partition_threshold(p, r), r, s.dtype
        )
        self.code = ALSCode(s.partition, s.n_workers, self.points)
        super().__init__(master, D, self.code.padded_size(int(D.shape[0])))
        self.need = self.code.recovery_threshold
        # A D stored on disk is never loaded whole: it is encoded strip by strip per shard.
        self.builder = CodedShard(self.code, s.dtype)

    def gram_quantities(self, t: int, B: np.ndarray, live: list[int]) -> tuple:
        code = self.code
        with self.master.master_time():
            right = dict(zip(live, code.encode_operand(B, live), strict=True))
        kind = code.product_code.product_kind
        K, e = code.recovery_threshold, self.settings.verify
        answers = self.master.exchange(
            t,
            Exchange(
                "E",
                1,
                worker_product,
                live,
                lambda w: (kind, self.shard_future(w), Scatter(right[w])),
                # 2e answers beyond K locate up to e wrong ones; wait for them only briefly
                Threshold(K, at_most=K + 2 * e, patience=1.0 if e else None),
            ),
        )
        with self.master.master_time():
            values = self._checked(answers, e)
            E = code.decode_stage1(values)
            error = code.product_code.estimated_error(sorted(values), self.product_eps)
        return self._master_side(B, E, error)

    def _checked(self, answers: Any, max_wrong: int) -> dict[int, Any]:
        """The answers without those the code's redundancy shows to be wrong (at most
        ``max_wrong``; more is a ClusterError); recorded in the stage and the master."""
        if not max_wrong:
            return answers.values
        wrong = locate_wrong_answers(self.code.product_code, answers.values, max_wrong)
        answers.record.wrong = sorted(wrong)
        for w in wrong:
            self.master.wrong_answers[w] = self.master.wrong_answers.get(w, 0) + 1
        return {w: v for w, v in answers.values.items() if w not in wrong}


class CodedPaper(CodedFast):
    """The paper's protocol: three coded exchanges per iteration and a coded post-computation."""

    def gram_quantities(self, t: int, B: np.ndarray, live: list[int]) -> tuple:
        code, master = self.code, self.master
        K = code.recovery_threshold
        cheap = code.gram_code
        with master.master_time():
            factor = dict(zip(live, self._encode_factor(B, live), strict=True))
        first = master.exchange(
            t,
            Exchange(
                "E",
                1,
                code.stage1_and_2,
                live,
                lambda w: (self.shard_future(w), Scatter(factor[w])),
                Threshold(K),
            ),
        )
        with master.master_time():
            E = code.decode_stage1({w: v[0] for w, v in first.values.items()})
            F = code.decode_stage2({w: v[1] for w, v in first.values.items()})
            holders = sorted(first.operands)
            right_e = dict(zip(holders, cheap.encode_b(E, holders), strict=True))
        second = master.exchange(
            t,
            Exchange(
                "S",
                2,
                code.stage3,
                holders,
                lambda w: (first.operands[w][0], Scatter(right_e[w])),
                Threshold(cheap.recovery_threshold, cheap.estimated_error, K),
            ),
        )
        with master.master_time():
            S = code.decode_stage3(second.values)
            error = max(
                code.product_code.estimated_error(sorted(first.values), self.product_eps),
                cheap.estimated_error(sorted(second.values), self.product_eps),
            )
        return F, S, {"E": E, "right_e": second.operands, "decode_error": error}

    def _encode_factor(self, B: np.ndarray, workers: list[int]) -> list[np.ndarray]:
        left = self.code.gram_code.encode_a(B, workers)
        if self.code.complex:
            return left
        right = self.code.gram_code.encode_b(B, workers)
        return [np.stack([fl, fr]) for fl, fr in zip(left, right, strict=True)]

    def _scale(self, t: int, name: str, operand: dict, G: np.ndarray) -> np.ndarray:
        """``f_R(M, x_w) G`` on the workers that hold ``f_R(M, x_w)``, decoded to M G."""
        cheap = self.code.gram_code
        holders = sorted(operand)
        answers = self.master.exchange(
            t,
            Exchange(
                name,
                3,
                self.code.stage4,
                holders,
                lambda w: (operand[w], G),
                Threshold(cheap.b_threshold, cheap.estimated_b_error, self.code.recovery_threshold),
            ),
        )
        with self.master.master_time():
            return self.code.decode_stage4(answers.values)

    def update(self, t: int, state: dict, G: np.ndarray) -> np.ndarray:
        return self._scale(t, "B", {w: f[0] for w, f in state["right_e"].items()}, G)

    def post(self, t: int, state: dict, B: np.ndarray, F: np.ndarray) -> np.ndarray:
        # Eq. (29) through the coded stage: H = B (F + lam I)^-1 from f_R(B, x_w).
        with self.master.master_time():
            inverse = np.linalg.inv(F + self.lam * np.eye(F.shape[0]))
            holders = sorted(state["right_e"])
            right_b = dict(zip(holders, self.code.gram_code.encode_b(B, holders), strict=True))
        return self.unpad(self._scale(t, "H", {w: Scatter(right_b[w]) for w in holders}, inverse))


class RowBlocks(_Scheme):
    """The baselines: D split by rows, ``copies`` workers per block, first copy wins."""

    def __init__(self, master: Any, D: Any, copies: int) -> None:
        super().__init__(master, D, int(D.shape[0]))
        s = self.settings
        W = s.n_workers
        self.n_blocks = max(1, W // copies)
        self.edges = np.linspace(0, self.size, self.n_blocks + 1).astype(int)
        self.block_of = {w: w % self.n_blocks for w in range(W)}
        self.need = self.n_blocks
        self.builder = RowBlock(
            tuple(int(e) for e in self.edges), tuple(self.block_of.values()), s.dtype
        )

    def gram_quantities(self, t: int, B: np.ndarray, live: list[int]) -> tuple:
        answers = self.master.exchange(
            t,
            Exchange(
                "E",
                1,
                tasks.row_block_product,
                live,
                lambda w: (self.shard_future(w), Scatter(B)),
                FirstCopies(self.block_of, self.n_blocks),
            ),
        )
        with self.master.master_time():
            by_block = {self.block_of[w]: v for w, v in answers.values.items()}
            E = np.vstack([by_block[b] for b in range(self.n_blocks)]).astype(np.float64)
        # float64 products count as exact here, as they always have; float32 ones do not
        rounding = 0.0 if self.settings.dtype == "float64" else self.product_eps
        return self._master_side(B, E, rounding)


def make_scheme(master: Any, D: Any) -> _Scheme:
    """The scheme of ``master.settings`` (mode and protocol) for D."""
    s = master.settings
    if s.mode == "coded":
        scheme = (CodedFast if s.protocol == "fast" else CodedPaper)(master, D)
    else:
        scheme = RowBlocks(master, D, 1 if s.mode == "uncoded" else s.n_stragglers + 1)
    return scheme
