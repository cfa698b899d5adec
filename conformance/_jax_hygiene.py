"""Release JAX's compiled executables after every test module.

Each XLA executable JAX compiles keeps about eight memory mappings alive for as long as the jit
caches hold it; one pytest process of the whole suite compiles thousands, reaches the kernel's
mapping limit (vm.max_map_count, 65530 here) and segfaults inside the next compilation. Clearing
the caches between modules costs only the recompilations a later module would share.
"""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True, scope="module")
def release_jax_executables():
    yield
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.clear_caches()
