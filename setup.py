"""The one compiled part: bpe_fast's per-piece encoder (backends/bpe_fast/_core.c).

Optional: where no C compiler is found the install goes on and bpe_fast runs its pure-Python
path (a bpe_fast tokenizer's ``core`` says which it runs). Everything else is in
pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("lmspec.backends.bpe_fast._core", ["backends/bpe_fast/_core.c"],
                             extra_compile_args=["-O2"], optional=True)])
