"""Embedding lookup reference; the backward scatter-adds, so repeated ids accumulate."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import _acc, f
from lmspec.spec.embedding import check_args, check_range


def embedding(ids, table):
    check_args(ids, table)
    ids = np.asarray(ids)
    if ids.size:
        check_range(int(ids.min()), int(ids.max()), table.shape[0])
    return f(table)[ids]


def embedding_vjp(dout, ids, table):
    ids = np.asarray(ids)
    d = table.shape[1]
    dtable = np.zeros(table.shape, dtype=_acc())
    np.add.at(dtable, ids.reshape(-1), np.asarray(f(dout), dtype=_acc()).reshape(-1, d))
    return {"table": f(dtable)}
