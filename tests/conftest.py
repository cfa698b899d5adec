"""Shared fixtures of the project's own tests."""

from lmspec.conformance._jax_hygiene import release_jax_executables  # noqa: F401  (autouse)
from lmspec.conformance._stable_examples import disable_local_constants  # noqa: F401
