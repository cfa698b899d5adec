"""LMSPEC_TEST_BPE_CORE=<a built _core .so>: the tests here run on that build of bpe_fast's C
core instead of the installed one (tests/harness/test_core_mutants.py plants bugs in it so)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_PATH = os.environ.get("LMSPEC_TEST_BPE_CORE")
if _PATH:  # before anything imports bpe_fast, which takes its core from sys.modules then
    _NAME = "lmspec.backends.bpe_fast._core"
    _loader = importlib.machinery.ExtensionFileLoader(_NAME, _PATH)
    _module = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location(_NAME, _PATH, loader=_loader))
    _loader.exec_module(_module)
    sys.modules[_NAME] = _module
