r"""bpe_fast's pre-tokenizer: the preset patterns over ASCII text run on the compiled core's
hand-written scanners (_core.c's split), or, where it was not built, on stdlib ``re``.

On ASCII text a preset pattern matches exactly as it does with its Unicode classes narrowed to
their ASCII members, and stdlib ``re`` (possessive quantifiers since Python 3.11) runs that
narrowed pattern about twice as fast as the ``regex`` module runs the original (cl100k, 1 MB of
Python source, one-off timing: 0.04 s vs 0.09 s; the reference spends 0.39 s in all). The
scanners take another half off (0.02 s, with the pieces made as str).

Text with non-ASCII characters is cut at proven piece boundaries, so that each stretch holding
a non-ASCII character goes to ``regex`` and the rest to ``re``. The boundaries are positions
``p`` right after a line feed, followed by printable ASCII (not space), and, per preset:
- gpt2: right after the line feed (``[!-~]`` at ``p``). The whitespace run that ends in that
  line feed is followed by a non-space, so ``\s++$`` fails and ``\s+(?!\S)`` backs off its
  last character, the line feed, which ``\s`` then takes alone; no other branch holds
  whitespace followed by a non-space.
- cl100k_base: after the run's last line feed, with spaces or tabs after it
  (``[ \t]*[!-~]`` at ``p``). Only ``\s*[\r\n]``, ``\s++$``, ``\s+(?!\S)``, ``\s`` and
  the punctuation branch (``...[\r\n]*+``) can hold a line feed; in a whitespace run that is
  not at the end, ``\s*[\r\n]`` wins (``\s++$`` fails, the rest come after it) and ends at
  the run's last line feed; the punctuation branch takes line feeds only.
- o200k_base: the same with ``\s*[\r\n]+``, but its punctuation branch ends in ``[\r\n/]*``
  (greedy): so no "/" right at ``p`` (``[ \t]+[!-~]`` or ``[!-.0-~]`` at ``p``).
No branch of any preset looks behind, so matching resumes at ``p`` as it would at the start of
a text. Other patterns run on ``regex`` as given. tests/backends/test_bpe_fast_pretokenize.py
checks the class narrowing character by character and the split against the reference.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import cache

import regex

from lmspec.spec.tokenizer import PRESETS

_PROPERTY = re.compile(r"\\p\{(\w+)\}")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# pattern -> its piece boundaries right after a line feed (the module docstring says why)
BOUNDARIES: dict[str, re.Pattern] = {
    PRESETS["gpt2"].pattern: re.compile(r"\n(?=[!-~])"),
    PRESETS["cl100k_base"].pattern: re.compile(r"\n(?=[ \t]*[!-~])"),
    PRESETS["o200k_base"].pattern: re.compile(r"\n(?=[ \t]+[!-~]|[!-.0-~])"),
}
# from a line feed: the text up to and with the first non-space after it (matching on a text
# cut there sees, before the boundary, all that matching on the whole text sees)
_TO_NON_SPACE = re.compile(r"\n[ \t]*[!-~]")


@cache
def ascii_members(prop: str) -> str:
    """The ASCII characters that ``regex`` puts in ``\\p{prop}``, as a class body for ``re``."""
    members = regex.compile(rf"\p{{{prop}}}")
    return "".join(re.escape(chr(c)) for c in range(128) if members.fullmatch(chr(c)))


def ascii_pattern(pattern: str) -> str:
    """``pattern`` with each ``\\p{..}`` narrowed to its ASCII members (for ``re.ASCII``)."""
    out, pos, in_class = [], 0, False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            m = _PROPERTY.match(pattern, i)
            if m:
                body = ascii_members(m.group(1))
                out.append(pattern[pos:i])
                out.append(body if in_class else f"[{body}]" if body else "(?!)")
                pos = i = m.end()
                continue
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
            i += 1 + pattern.startswith("^", i + 1)
            i += pattern.startswith("]", i)  # a leading "]" is a member, not the end
            continue
        if ch == "]" and in_class:
            in_class = False
        i += 1
    out.append(pattern[pos:])
    return "".join(out)


# the compiled core's scanners of the presets on ASCII text (_core.c's split), by number
SCANNERS = {PRESETS[name].pattern: k for k, name in enumerate(("gpt2", "cl100k_base",
                                                              "o200k_base"))}


def matches(pattern: str) -> Callable[..., list[str]]:
    """``findall(text, pos, endpos)`` of the whole matches: findall itself gives a pattern's
    groups where it has any."""
    compiled = regex.compile(pattern)
    if not compiled.groups:
        return compiled.findall
    finditer = compiled.finditer

    def findall(text: str, pos: int = 0, endpos: int = sys.maxsize) -> list[str]:
        return [m.group() for m in finditer(text, pos, endpos)]

    return findall


def splitter(pattern: str, core=None) -> Callable[[str], list[str]]:
    """The pieces of a text under ``pattern`` (whose matches must tile it; the caller checks).
    core: the compiled core (_core), whose scanners then take the ASCII stretches."""
    full = matches(pattern)
    boundary = BOUNDARIES.get(pattern)
    if boundary is None:
        return full
    def upto(match, text: str, pos: int, cut: int) -> list[str]:
        """The pieces of text[pos:cut] (cut a boundary), matching on text cut a little later."""
        pieces = match(text, pos, _TO_NON_SPACE.match(text, cut - 1).end())
        n = sum(map(len, pieces))
        while n > cut - pos:  # drop the pieces after the boundary
            n -= len(pieces.pop())
        return pieces

    if core is not None:  # the scanners stop at the cut themselves
        preset, scan = SCANNERS[pattern], core.split

        def narrow(text: str, pos: int = 0) -> list[str]:
            return scan(text, preset, pos)

        def narrow_upto(text: str, pos: int, cut: int) -> list[str]:
            return scan(text, preset, pos, _TO_NON_SPACE.match(text, cut - 1).end(), cut)
    else:
        narrow = re.compile(ascii_pattern(pattern), re.ASCII).findall

        def narrow_upto(text: str, pos: int, cut: int) -> list[str]:
            return upto(narrow, text, pos, cut)

    def split(text: str) -> list[str]:
        if text.isascii():
            return narrow(text)
        pieces: list[str] = []
        pos, n = 0, len(text)
        while pos < n:
            m = _NON_ASCII.search(text, pos)
            if m is None:
                pieces += narrow(text, pos)
                break
            # the ASCII stretch up to the last boundary before the non-ASCII character
            lf = text.rfind("\n", pos, m.start())
            while lf >= 0 and not boundary.match(text, lf):
                lf = text.rfind("\n", pos, lf)
            if lf >= 0:
                pieces += narrow_upto(text, pos, lf + 1)
                pos = lf + 1
            b = boundary.search(text, m.end())
            if b is None:
                pieces += full(text, pos)
                break
            pieces += upto(full, text, pos, b.start() + 1)
            pos = b.start() + 1
        return pieces

    return split
