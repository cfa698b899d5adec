"""Token embedding via torch.nn.functional.embedding (backward: torch's scatter-add)."""

from __future__ import annotations

import torch.nn.functional as F

from lmspec.spec.embedding import check_args, check_range


def embedding(ids, table):
    check_args(ids, table)
    # adapter: the spec's range check first (torch's IndexError does not name `ids`)
    if ids.numel():
        check_range(int(ids.min()), int(ids.max()), table.shape[0])
    return F.embedding(ids, table)
