"""The one classifier: what the site of a record is, for scan, rewrite and verify.

Input, per code section (:class:`Code`): its instruction words and the sorted
offsets where a function entry starts and ends (typed, sized function
symbols, ``ElfFile.function_entries``); per record: the offset it points at.
Output, per record (:class:`Verdict`): the state (pristine, rewritten,
invalid) and the site's whole geometry: the layout, where callers enter, the
MOV word, the BL slot and, under CALL_OPS, the ops literal; for an invalid
site the reason and the place to name.  ``scan``'s Sites and ``verify``
take these fields from :func:`classify_file`, the rewrite's planner from the
same steps in columns; nothing else judges a site's words or works out its
geometry again.

The file's prefix length (``-fpatchable-function-entry=N,M``: M NOPs before
each function symbol) is decided once, by :class:`PrefixVote`, from the
sites that have a function symbol.

The rules, in order (a site is ``[prefix NOPs] [BTI C] first ; slot``):

1. The record on a NOP right after ``mov x9, x30`` is what a rewrite leaves
   (whatever symbol a hostile symtab puts at the slot) -- unless a function
   starts after it with only NOPs between and no function owns the MOV:
   then the MOV is in that function's prefix (the CALL_OPS ops literal),
   callers enter past it, and the site is invalid (issue 12).
2. With no function symbol on or just before the record (an overridden weak
   function, whose code and record an ``ld -r`` keeps without its symbol;
   hand-written code), a record inside another function's body (between its
   symbol and ``st_value + st_size``: dead code after a branch, padding) is
   no entry, whatever its words: no caller runs it.  Elsewhere the words
   decide, and only what they prove: the
   record on ``nop ; nop`` followed by neither a NOP nor a BTI cannot be in a
   prefix, so it is pristine with no prefix.  Anything else may be M prefix
   NOPs of ``-fpatchable-function-entry=N,M`` (the MOV then belongs M words
   further): the prefix length the file's function-symbol sites show
   (``Code.prefix``, set by ``scan_elf``) decides, and without one the site
   is invalid (``Problem.PREFIX_UNKNOWN``), never guessed.
3. Otherwise the function symbol decides: the record on its entry (or in the
   NOPs before it) is pristine when the entry is ``nop ; nop``; every other
   combination is invalid, with the reason (half rewritten, landing pad, ...).
"""

from __future__ import annotations

import mmap
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ftpatch import arm64
from ftpatch.elf.reader import ET_REL, ElfFile, Section
from ftpatch.model import Layout, Problem, State

NOP, MOV = arm64.NOP, arm64.MOV_X9_X30
_BTI = arm64.BTI_LANDING_PADS
_EXPECT_NOP = "nop (d503201f)"

# -fpatchable-function-entry=N,M puts M NOPs before the symbol; Linux uses 2.
# A record this far before its function is still taken for a prefix.
MAX_PREFIX_WORDS = 16
_MAX_PREFIX = 4 * MAX_PREFIX_WORDS
# Linux CALL_OPS (-fpatchable-function-entry=4,2): the two prefix NOPs hold
# the 8-byte ops literal, which ftrace_rec_set_ops() finds at
# ALIGN_DOWN(rec->ip - 12, 8) from the BL slot (arch/arm64/kernel/ftrace.c).
CALL_OPS_PREFIX = 2

_PRISTINE, _REWRITTEN, _INVALID = State.PRISTINE, State.REWRITTEN, State.INVALID
_LAYOUTS = {(p, b): Layout(p, b) for p in (None, 0, 1, 2) for b in (False, True)}
# A rewritten site's layout, by whether a NOP precedes its entry (_rewritten_layout).
_PLAIN_LAYOUTS = (Layout(0, False), Layout(None, False))
_BTI_LAYOUTS = (Layout(0, True), Layout(None, True))


def _layout(prefix: int | None, bti: bool) -> Layout:
    cached = _LAYOUTS.get((prefix, bti))
    return cached if cached is not None else Layout(prefix, bti)


class Code(NamedTuple):
    """One code section as the classifier reads it.

    ``words`` holds the section's whole 32-bit words (instruction words are
    little-endian, arm64.py) in host order; ``starts`` the sorted offsets of
    its function entries, ``ends`` where each ends (``st_value +
    st_size``), ``symbols`` the symbol index naming each (arrays: no object
    per function).
    """

    name: str  # the section's, for messages
    words: array  # type: ignore[type-arg]
    size: int  # sh_size: a word at o exists when o <= size - 4
    starts: Sequence[int]  # an array, or a list (linked images: may be negative)
    ends: Sequence[int]  # parallel to starts
    symbols: array  # type: ignore[type-arg]
    data: bytes | mmap.mmap  # the file's bytes (ElfFile.data), for words off the 4-byte grid
    file_offset: int  # the section's sh_offset in data
    symbol_name: Callable[[int], str]  # symbol index -> name, for messages only
    # Where the last search in ``starts`` ended (records come in address
    # order, mostly): a guess that spares the binary search, never a result.
    cursor: list[int]
    base: int = 0  # the section's address (sh_addr) in a linked image, 0 in an object
    # Prefix NOPs before every function entry of the file, as its sites with
    # a function symbol show them (PrefixVote); None: not known.
    prefix: int | None = None
    # The prefix is what pristine sites show (exact), not only the least
    # number of NOPs rewritten sites have before their entries (a bound).
    prefix_exact: bool = False

    def function(self, owner: int) -> str | None:
        return self.symbol_name(self.symbols[owner]) if owner >= 0 else None


class Verdict(NamedTuple):
    """What one record's site is.  Offsets count from the section's start."""

    state: State
    where: int  # the offset messages name (the record, or the word at fault)
    owner: int  # index into Code.starts of the symbol naming ``where``, -1: none
    layout: Layout | None
    reason: str | None = None
    mov: int | None = None  # first entry word: nop -> mov x9, x30
    slot: int | None = None  # second entry word: the BL slot
    # Where callers enter: the function symbol, or for a symbol-less site the
    # first word after its prefix (a BTI C, or the MOV word).  For a site
    # that is not on a caller's path, the entry of the function callers do
    # take, and its MOV and slot.
    entry: int | None = None
    problem: Problem | None = None  # why an invalid site is invalid
    # CALL_OPS only (Code.prefix == 2): the 8-byte ops literal the kernel
    # stores at ALIGN_DOWN(slot - 12, 8); None otherwise (classify_file).
    literal: int | None = None


def code_of(elf: ElfFile, sec: Section) -> Code:
    """``sec`` read for the classifier: its words and its function entries.

    A function entry is a typed, sized function symbol
    (``ElfFile.function_entries``).
    """
    # sh_size, or less for a section cut short by the file's end
    size = max(0, min(sec.sh_size, elf.size - sec.sh_offset))
    words = elf.read_array("I", sec.sh_offset, size)
    if sys.byteorder == "big":
        words.byteswap()  # instruction words are little-endian (arm64.py)
    entries = elf.function_entries.get(sec.index)
    starts: Sequence[int]
    ends: Sequence[int]
    base = sec.sh_addr if elf.e_type != ET_REL else 0
    if entries is None:
        starts, symbols, ends = array("Q"), array("I"), array("Q")
    else:
        values, symbols, stops = entries
        # Linked images: offsets from the section's address (a list: a hostile
        # symbol may lie anywhere, before the section too).
        starts = [value - base for value in values] if base else values
        ends = [stop - base for stop in stops] if base else stops
    return Code(
        sec.name,
        words,
        size,
        starts,
        ends,
        symbols,
        elf.data,
        sec.sh_offset,
        elf.symbol_name,
        [0],
        base,
    )


def word_at(code: Code, offset: int) -> int | None:
    """The instruction word at ``offset``, None outside the section."""
    if offset < 0 or offset > code.size - 4:
        return None
    if offset & 3:
        return arm64.read_word(code.data, code.file_offset + offset)
    return int(code.words[offset >> 2])


def _found(code: Code, offset: int, expected: str) -> str:
    w = word_at(code, offset)
    return f"expected {expected}, found {arm64.describe(w) if w is not None else 'end of section'}"


def _rewritten_layout(code: Code, entry: int, bti: bool) -> Layout:
    """A rewritten site's layout: its record no longer says how many prefix
    NOPs there were, so only a proof counts.  No NOP right before the entry
    (or the section's start) proves there is no prefix; NOPs there may be a
    prefix or alignment padding, and the layout says ``prefix?``."""
    return _layout(None if word_at(code, entry - 4) == NOP else 0, bti)


def classify(code: Code, r: int) -> Verdict:
    """The site of a record pointing at offset ``r`` of ``code``.

    Written for speed (a vmlinux.o has tens of thousands of records): word
    reads go straight to the array, with ``word_at`` only at the edges.
    """
    starts = code.starts
    nstarts = len(starts)
    words = code.words
    nw = len(words)
    if r & 3:
        return _misaligned(code, r)
    k = r >> 2
    # The symbol that names the place: the first function at or after r with
    # only NOPs between (r is on its entry or in its prefix), else the last
    # one before r.  i = bisect_left(starts, r), tried first where the last
    # record's search ended, and the next function (each costs two reads).
    cursor = code.cursor
    i = cursor[0]
    if not (i < nstarts and starts[i] >= r and (i == 0 or starts[i - 1] < r)):
        i += 1
        if not (i < nstarts and starts[i] >= r and starts[i - 1] < r):
            i = bisect_left(starts, r)
    cursor[0] = i
    owner = i - 1
    if i < nstarts:
        s = starts[i]
        if s == r or (s - r <= _MAX_PREFIX and words[k : s >> 2].count(NOP) == (s - r) >> 2):
            owner = i
    v = starts[owner] if owner >= 0 else None

    if 1 <= k < nw - 1:
        w_prev, w0, w1 = words[k - 1], words[k], words[k + 1]
    else:
        w_prev, w0, w1 = word_at(code, r - 4), word_at(code, r), word_at(code, r + 4)

    if w_prev == MOV and w0 == NOP:
        # Where callers enter: the function symbol on the mov, or on the
        # BTI C before it; with neither, the words say (bti or not).
        bti = k >= 2 and words[k - 2] in _BTI
        if v == r - 4 or _starts_at(starts, r - 4):
            entry, bti = r - 4, False
        elif bti and (v == r - 8 or _starts_at(starts, r - 8)):
            entry = r - 8
        else:
            # Is the mov in the prefix of a function after it?  (A symbol on
            # the slot itself is a hostile symtab's, not an entry after a
            # prefix: the words decide, as below.)
            n = bisect_left(starts, r)
            if n < nstarts and starts[n] > r:
                f = starts[n]
                if f - r <= _MAX_PREFIX and words[k : f >> 2].count(NOP) == (f - r) >> 2:
                    return _mov_in_prefix(code, r, n, f)
            # No symbol on the MOV (or on the BTI C before it): the remains of
            # an overridden weak function, entered there, unless another
            # function's body holds it (rule 2).
            entry = r - 8 if bti else r - 4
            inside = _inside(code, entry)
            if inside >= 0:
                return _not_at_entry(code, r, inside)
        j = k - (3 if bti else 2)  # the word before the entry
        layout = (_BTI_LAYOUTS if bti else _PLAIN_LAYOUTS)[j >= 0 and words[j] == NOP]
        return Verdict(_REWRITTEN, r, owner, layout, None, r - 4, r, entry)
    if v is None or v < r - 8:
        # No function symbol for this entry (an overridden weak function,
        # hand-written code).  Inside another function's body it is no entry;
        # elsewhere the words decide, as far as they prove.
        if owner >= 0 and r < code.ends[owner]:
            return _not_at_entry(code, r, owner)
        if w0 == NOP and w1 == NOP:
            w2 = word_at(code, r + 8)
            if w2 != NOP and w2 not in _BTI:
                bti = w_prev in _BTI
                layout = _layout(0, bti)
                return Verdict(_PRISTINE, r, owner, layout, None, r, r + 4, r - 4 if bti else r)
            return _by_prefix(code, r, owner, w_prev)
        bad = r if w0 != NOP else r + 4
        # (nop then no nop: read as a slot without its mov; mov then no nop:
        # a slot holding something else.)
        why = _found(code, bad, _EXPECT_NOP)
        problem = Problem.NO_MOV if w0 == NOP else Problem.OTHER
        if w0 != NOP and w_prev == MOV:
            problem = Problem.SLOT_NOT_NOP
        return Verdict(_INVALID, bad, owner, None, why, None, None, None, problem)

    kv = v >> 2
    bti = kv < nw and words[kv] in _BTI
    e = v + 4 if bti else v  # the first entry word
    slot = e + 4
    ke = e >> 2
    w_e = words[ke] if ke < nw else None
    w_slot = words[ke + 1] if ke + 1 < nw else None
    if r < v or r == e:
        # The record at the pristine position: the entry, or the prefix NOPs.
        layout = (
            (_BTI_LAYOUTS if bti else _PLAIN_LAYOUTS)[0] if r >= v else _layout((v - r) >> 2, bti)
        )
        if w_e == NOP and w_slot == NOP:
            return Verdict(_PRISTINE, r, owner, layout, None, e, slot, v)
        before = Problem.RECORD_BEFORE_ENTRY if r < e else None
        if w_e == MOV and w_slot == NOP:
            why = "half rewritten: mov x9, x30 present but record not moved to the BL slot"
            problem = before or Problem.RECORD_ON_MOV
            return Verdict(_INVALID, e, owner, layout, why, e, slot, v, problem)
        bad = e if w_e != NOP else slot
        why = _found(code, bad, _EXPECT_NOP)
        return Verdict(_INVALID, bad, owner, layout, why, e, slot, v, before or Problem.OTHER)
    if r == slot:
        layout = _rewritten_layout(code, v, bti)
        if w_e == NOP and w_slot == NOP:
            why = "half rewritten: record moved to the BL slot but no mov x9, x30 before it"
            return Verdict(_INVALID, e, owner, layout, why, e, slot, v, Problem.NO_MOV)
        bad = e if w_e != MOV else slot
        expected = "mov x9, x30 (aa1e03e9)" if bad == e else _EXPECT_NOP
        if bad == slot:
            problem = Problem.SLOT_NOT_NOP
        else:
            problem = Problem.NO_MOV if w_slot == NOP else Problem.NO_MOV_NOR_NOP
        why = _found(code, bad, expected)
        return Verdict(_INVALID, bad, owner, layout, why, e, slot, v, problem)
    if r == v and bti:
        why = f"record points at the landing pad, {_found(code, r, _EXPECT_NOP)}"
        layout = _rewritten_layout(code, v, bti)
        return Verdict(_INVALID, r, owner, layout, why, None, None, None, Problem.OTHER)
    why = f"record is not at the entry of {code.function(owner)}: {_found(code, r, _EXPECT_NOP)}"
    return Verdict(_INVALID, r, owner, None, why, None, None, None, Problem.OTHER)


def _by_prefix(code: Code, r: int, owner: int, w_prev: int | None) -> Verdict:
    """A record with no function symbol on ``nop ; nop ; nop`` (or ``nop ;
    nop ; bti``): its prefix length is the file's (``code.prefix``), if known
    exactly."""
    p = code.prefix if code.prefix_exact else None
    if p is None:
        why = (
            "no function symbol at the record, and its words fit more than one layout "
            f"({_words(code, r, 4)}): how many of the NOPs are a prefix "
            "(-fpatchable-function-entry=N,M) is not known"
        )
        return Verdict(_INVALID, r, owner, None, why, None, None, None, Problem.PREFIX_UNKNOWN)
    e = r + 4 * p
    for o in range(r, e, 4):
        if word_at(code, o) != NOP:
            why = f"prefix NOP {(o - r) >> 2} of {p}: {_found(code, o, _EXPECT_NOP)}"
            return Verdict(_INVALID, o, owner, None, why, None, None, None, Problem.OTHER)
    bti = word_at(code, e) in _BTI if p else w_prev in _BTI
    entry = e if p or not bti else e - 4
    if p and bti:
        e += 4
    for o in (e, e + 4):
        if word_at(code, o) != NOP:
            why = _found(code, o, _EXPECT_NOP)
            problem = Problem.RECORD_BEFORE_ENTRY if p else Problem.OTHER
            return Verdict(_INVALID, o, owner, _layout(p, bti), why, e, e + 4, entry, problem)
    return Verdict(_PRISTINE, r, owner, _layout(p, bti), None, e, e + 4, entry)


def _words(code: Code, offset: int, count: int) -> str:
    """``count`` words from ``offset``, described, for messages."""
    return " ; ".join(
        arm64.describe(w) if w is not None else "end of section"
        for w in (word_at(code, offset + 4 * i) for i in range(count))
    )


def _misaligned(code: Code, r: int) -> Verdict:
    """A record off the 4-byte grid: invalid, named as the aligned ones are."""
    starts = code.starts
    i = bisect_left(starts, r)
    owner = bisect_right(starts, r) - 1
    if i < len(starts) and starts[i] - r <= _MAX_PREFIX:
        if all(word_at(code, o) == NOP for o in range(r, starts[i], 4)):
            owner = i
    why = f"record is not 4-byte aligned ({code.name}+{r:#x})"
    return Verdict(_INVALID, r, owner, None, why, None, None, None, Problem.MISALIGNED)


def _starts_at(starts: Sequence[int], offset: int) -> bool:
    i = bisect_left(starts, offset)
    return i < len(starts) and starts[i] == offset


def _mov_in_prefix(code: Code, r: int, n: int, f: int) -> Verdict:
    e = f + 4 if word_at(code, f) in _BTI else f
    why = (
        f"mov x9, x30 in the prefix before {code.function(n)}, "
        f"whose entry is {_words(code, e, 2)}: "
        "callers never run it, and the record is not on the BL slot"
    )
    # The MOV and slot named are those of the entry callers take.
    return Verdict(_INVALID, r - 4, n, None, why, e, e + 4, f, Problem.NOT_AT_ENTRY)


def _inside(code: Code, offset: int) -> int:
    """The function whose body holds ``offset`` past its first word (its
    index in ``code.starts``), or -1."""
    i = bisect_right(code.starts, offset) - 1
    if i >= 0 and code.starts[i] < offset < code.ends[i]:
        return i
    return -1


def _not_at_entry(code: Code, r: int, f: int) -> Verdict:
    """A record inside the body of function ``f``: no caller runs the word
    it names, so patching it would trace nothing and prove nothing.  The
    entry, MOV and slot named are those of ``f``, where callers do enter."""
    start = code.starts[f]
    e = start + 4 if word_at(code, start) in _BTI else start
    name = code.function(f)
    why = (
        f"record is inside {name} ({name}+{r - start:#x}), not at a function entry: "
        f"callers enter at {name}+0x0 and run {_words(code, start, (e - start + 8) >> 2)}, "
        f"never {_words(code, r - 4, 2)} here"
    )
    return Verdict(_INVALID, r, f, None, why, e, e + 4, start, Problem.NOT_AT_ENTRY)


def literal_of(code: Code, slot: int) -> int:
    """The offset of the 8-byte CALL_OPS literal of the site whose BL slot is
    at ``slot``, computed as the kernel does: ALIGN_DOWN(slot - 12, 8) on the
    address (ftrace_rec_set_ops(), arch/arm64/kernel/ftrace.c)."""
    address = code.base + slot - 12
    return (address & ~7) - code.base


class FileVerdicts(NamedTuple):
    """Every record's verdict, and the file's prefix that decided them."""

    verdicts: list[Verdict | None]  # None: the record was not mapped to code
    prefix: int | None  # PrefixVote: NOP words before each function symbol


class PrefixVote:
    """The file's prefix length: the one rule, from the sites with a function
    symbol (the symbol is the entry), fed one verdict at a time (``add``).

    A pristine site's record says it exactly (its distance to the symbol);
    they must all agree.  A rewritten site's record is on its slot and no
    longer says: the NOPs before its entry bound it (they may also be
    alignment padding), and the least of them is the bound.  ``result()``
    is ``(prefix, exact)``: exact when pristine sites agree on it (and no
    rewritten site has fewer NOPs before its entry), ``(bound, False)``
    from rewritten sites alone, ``(None, False)`` when nothing says or the
    sites disagree.  Only an exact prefix decides a symbol-less pristine
    site's layout (``_by_prefix``); either kind says whether the file is
    CALL_OPS, whose literal every site's check must look at.
    """

    __slots__ = ("exact", "least")

    def __init__(self) -> None:
        self.exact: set[int | None] = set()
        self.least: int | None = None

    def add(self, code: Code, v: Verdict) -> None:
        f = v.owner
        if f < 0 or v.entry is None or code.starts[f] != v.entry:
            return
        if v.state is _PRISTINE:
            self.exact.add(v.layout.prefix_nops if v.layout is not None else None)
        elif v.state is _REWRITTEN:
            limit = MAX_PREFIX_WORDS if self.least is None else self.least
            n = 0
            while n < limit and word_at(code, v.entry - 4 * (n + 1)) == NOP:
                n += 1
            self.least = n

    def result(self) -> tuple[int | None, bool]:
        least = self.least
        if self.exact:
            if len(self.exact) == 1:
                p = next(iter(self.exact))
                if p is not None and (least is None or p <= least):
                    return p, True
            return None, False
        return least, False


def depends_on_prefix(code: Code, v: Verdict) -> bool:
    """Whether the file's prefix may change ``v`` (:func:`decide`): a
    symbol-less pristine site whose words fit more than one layout, or a
    site with no function symbol at its entry."""
    if v.problem is Problem.PREFIX_UNKNOWN:
        return True
    if v.state is _INVALID or v.entry is None:
        return False
    return v.owner < 0 or code.starts[v.owner] != v.entry


def decide(code: Code, v: Verdict, r: int, prefix: int, exact: bool) -> Verdict:
    """``v``, the verdict of the record at ``r``, once the file's prefix is
    known (only where :func:`depends_on_prefix`).

    Only an exact prefix (what pristine sites show) decides: a rewritten
    file's bound may be alignment padding, and a rewrite must never refuse
    the file it wrote.  (verify's ops-literal check looks at the literal of
    every site of a CALL_OPS file, bound or not.)"""
    if not exact:
        return v
    if v.problem is Problem.PREFIX_UNKNOWN:
        return classify(code._replace(prefix=prefix, prefix_exact=True), r)
    if prefix:
        return _prefixed(code, v, prefix)
    return v


def classify_file(codes: Sequence[Code | None], offsets: Sequence[int]) -> FileVerdicts:
    """The verdict of every record of one file: record ``i`` points at offset
    ``offsets[i]`` of ``codes[i]`` (None: not mapped to code).

    Each site is classified, the file's prefix agreed from those with a
    function symbol (:class:`PrefixVote`), and then the sites that depend on
    it decided (:func:`decide`); under CALL_OPS every site with a slot names
    its literal.  (The rewrite's planner takes the same steps in columns.)
    """
    verdicts: list[Verdict | None] = []
    vote = PrefixVote()
    for c, r in zip(codes, offsets, strict=True):
        if c is None:
            verdicts.append(None)
            continue
        v = classify(c, r)
        vote.add(c, v)
        verdicts.append(v)
    prefix, exact = vote.result()
    if prefix is None:
        return FileVerdicts(verdicts, None)
    call_ops = prefix == CALL_OPS_PREFIX
    for i, (c, judged) in enumerate(zip(codes, verdicts, strict=True)):
        if c is None or judged is None:
            continue
        if depends_on_prefix(c, judged):
            judged = verdicts[i] = decide(c, judged, offsets[i], prefix, exact)
        if call_ops and judged.slot is not None:
            verdicts[i] = judged._replace(literal=literal_of(c, judged.slot))
    return FileVerdicts(verdicts, prefix)


def _prefixed(code: Code, v: Verdict, prefix: int) -> Verdict:
    """A site with no function symbol at its entry, in a file whose functions
    have ``prefix`` NOPs before their entries: the same NOPs must precede
    its entry.  Else the record is not where a rewrite puts it (a MOV
    written over the first of its prefix NOPs, by a rewrite that took the
    prefix for the entry, reads as a rewritten site with no prefix), or,
    pristine, the site has no room for the CALL_OPS literal."""
    assert v.entry is not None
    for o in range(v.entry - 4 * prefix, v.entry, 4):
        if word_at(code, o) != NOP:
            why = (
                f"no function symbol at the entry ({code.name}+{v.entry:#x}), and the "
                f"{prefix} words before it are {_words(code, v.entry - 4 * prefix, prefix)}, "
                f"not the {prefix} prefix NOPs every function of this file has"
                + (
                    ": the record is not where a rewrite of this site puts it"
                    if v.state is _REWRITTEN
                    else ""
                )
            )
            return v._replace(state=_INVALID, reason=why, problem=Problem.OTHER)
    return v
