"""Target: a backend in one dtype, what every conformance test is parametrized over."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmspec.backends import Backend, numpy_dtype


@dataclass(frozen=True)
class Target:
    """A backend in one dtype: what a conformance test is parametrized over."""

    backend: Backend
    dtype: str

    @property
    def np_dtype(self) -> np.dtype:
        return numpy_dtype(self.dtype)

    def __str__(self) -> str:
        return f"{self.backend.name}-{self.dtype}"
