"""A user's copy of the reference backend under its own name: what the suite says about a
naive NumPy implementation that nobody here registered (tests/harness/test_third_party.py)."""

from lmspec.backends import _reference_backend as _original

globals().update({k: v for k, v in vars(_original).items() if not k.startswith("__")})
NAME = "reference_copy"
