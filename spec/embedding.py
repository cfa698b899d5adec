"""Token embedding lookup; its backward is a scatter-add that accumulates repeated ids."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of


def embedding(ids, table):
    """``out[..., :] = table[ids[...], :]``.

    Shapes: ``ids`` (...) integer, any shape including empty; ``table`` (V, D). Output
    (..., D) in the dtype of ``table``.

    Gradient (with respect to ``table`` only): ``dtable[v] = sum over positions p with
    ids[p] == v of dout[p]``; rows never looked up get exactly zero. Repeated ids must
    accumulate, not overwrite (the classic scatter bug).

    Rejected: ``ids`` not integer (TypeError naming ``ids``); any id outside [0, V)
    (IndexError naming ``ids``; negative ids do not wrap); ``table`` not 2-D (ValueError).
    """
    check_args(ids, table)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(ids, table) -> None:
    require(len(shape_of(table)) == 2, ValueError,
            f"table: expected shape (V, D), got {shape_of(table)}")
    require(is_integer_array(ids), TypeError,
            f"ids: expected an integer array, got dtype {getattr(ids, 'dtype', type(ids))}")


def check_range(ids_min: int, ids_max: int, vocab: int) -> None:
    """Value check, separate so that backends can compute min/max their own way."""
    require(ids_min >= 0 and ids_max < vocab, IndexError,
            f"ids: expected every id in [0, {vocab}), got values in [{ids_min}, {ids_max}]")


@st.composite
def _cases(draw) -> Case:
    v = draw(S.sizes((1, 2, 5, 16, 33), min_size=1))
    d = draw(S.sizes((1, 3, 8, 17), min_size=1))
    ids_shape = draw(S.leading_shapes(max_dims=2))
    return Case({"ids": draw(S.int_arrays(ids_shape, 0, v)),
                 "table": draw(S.float_arrays((v, d)))}, {})


def _out_of_range(value):
    return lambda: ({"ids": np.array([0, value], dtype=np.int64), "table": np.ones((4, 3))}, {})


COMPONENT = Component(
    stem="embedding",
    inputs=("ids", "table"),
    outputs=("out",),
    differentiable=("table",),
    integer_inputs=("ids",),
    cases=_cases,
    errors=(
        ErrorCase("id equal to the vocabulary size", _out_of_range(4), IndexError, r"ids"),
        ErrorCase("negative id", _out_of_range(-1), IndexError, r"ids"),
        ErrorCase("float ids", lambda: ({"ids": np.array([0.0, 1.0]), "table": np.ones((4, 3))},
                                        {}), TypeError, r"ids"),
    ),
    summary="embedding lookup; backward scatter-adds repeated ids",
)
