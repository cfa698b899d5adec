"""Examples that do not depend on which modules happen to be imported.

Hypothesis (6.13x and later) mixes literal constants harvested from every *local* module in
``sys.modules`` into what it generates. lmspec's package is local in a checkout, so a
derandomized test drew other examples whenever any module with a new number in it was
imported: running one file alone or within the whole suite, or adding an unrelated component,
changed the CI examples (and with them which planted bugs a test caught). The harvest is
turned off here, so that the fixed examples depend only on the test and its strategies, and
a failure reproduces from the one-line command that the report prints. Hypothesis's own
built-in constants are kept."""

from __future__ import annotations


def disable_local_constants() -> bool:
    """Whether the harvest could be turned off (False on a Hypothesis without it)."""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover
        return False
    get = getattr(providers, "_get_local_constants", None)
    empty = getattr(providers, "_local_constants", None)
    if get is None or empty is None:
        return False
    if getattr(get, "_lmspec_disabled", False):
        return True
    frozen = type(empty)()  # an empty Constants

    def no_local_constants():
        return frozen

    no_local_constants._lmspec_disabled = True
    providers._get_local_constants = no_local_constants
    return True


disable_local_constants()
