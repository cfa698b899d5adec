"""Pallas kernels of the jax_xla backend; imported only when a kernel runs (or is tested)."""
