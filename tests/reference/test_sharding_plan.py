"""The tensor / expert-parallel plan (spec.model.tensor_parallel_dim): the split dimensions of
Megatron's pairs match (a column-split projection's outputs are the inputs of the row-split
one that follows it), so a shard never needs another shard's activations between them."""

from __future__ import annotations

import pytest

from lmspec.spec import model as M


@pytest.mark.parametrize("preset", sorted(M.PRESETS))
def test_column_and_row_splits_pair_up(preset):
    cfg = M.preset(preset)
    shapes = M.param_shapes(cfg)
    dims = {n: M.tensor_parallel_dim(n, cfg) for n in shapes}
    for n, d in dims.items():
        prefix, last = n.rsplit(".", 1) if "." in n else ("", n)
        if last == "w_down":  # FFN, shared expert or routed experts: fed by w_gate and w_up
            for m in ("w_gate", "w_up"):
                src = f"{prefix}.{m}"
                if d == 0 and len(shapes[n]) == 3:  # experts: all three split by expert
                    assert dims[src] == 0
                else:  # weights are (in, out): the source by outputs, w_down by inputs
                    assert (dims[src], d) == (1, 0), (src, n)
                    assert shapes[src][1] == shapes[n][0], (src, n)
        if last == "wo" and f"{prefix}.wv" in shapes:
            assert (dims[f"{prefix}.wq"], dims[f"{prefix}.wv"], d) == (1, 1, 0), n
        if M.param_kind(n) in ("norm", "bias", "buffer"):
            assert d is None, n
    assert dims["embed"] == 0


def test_unknown_name_is_refused():
    cfg = M.preset(sorted(M.PRESETS)[0])
    with pytest.raises(ValueError, match="name: 'layers.99.attn.wq' is not a parameter"):
        M.tensor_parallel_dim("layers.99.attn.wq", cfg)
