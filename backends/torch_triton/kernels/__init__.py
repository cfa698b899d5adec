"""Triton kernels (forward and backward) for the hot paths; imported only when a kernel runs."""
