"""Conformance of embedding: lookup, scatter-add backward with repeated ids, error inputs."""

from __future__ import annotations

from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec.embedding import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases())
def test_flat_ids_equal_shaped_ids(target, case):
    """The lookup does not depend on the shape of ids: flattened ids give flattened rows."""
    ids, table = case.arrays["ids"], case.arrays["table"]
    check.check_same(target, "flat_ids", STEM, case,
                     Case({"ids": ids.reshape(-1), "table": table}, {}),
                     view_a=lambda o: o[0].reshape(-1, table.shape[1]))
