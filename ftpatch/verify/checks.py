"""The static checks of one site, one function per finding.

Each takes the file (``view.FileView``), the site, its index and its code
section, and yields the findings of its one check (``findings.CHECK_*``);
``static.py`` calls them in a fixed order.  What a site is (state, layout,
entry, slot) the classifier has decided: these only name the finding each
judgement is, and add what depends on the runtime scheme, the relocations,
the branches and the addresses.
"""

from __future__ import annotations

from collections.abc import Iterator

from ftpatch import arm64
from ftpatch.elf.reader import Section
from ftpatch.elf.records import reloc_name
from ftpatch.model import Problem, Site, State
from ftpatch.verify.cases import Transition
from ftpatch.verify.findings import (
    CHECK_BRANCH,
    CHECK_CMODX_PAIR,
    CHECK_CMODX_WORDS,
    CHECK_ENTRY_PATH,
    CHECK_LITERAL,
    CHECK_MOV,
    CHECK_PREFIX_ALIGN,
    CHECK_RANGE,
    CHECK_RECORD,
    CHECK_RECORD_ON_MOV,
    CHECK_RELOCATION,
    CHECK_SCAN,
    CHECK_SLOT_ALIGN,
    CHECK_SLOT_WORD,
    Finding,
    Scheme,
)
from ftpatch.verify.relocs import LINKED
from ftpatch.verify.view import FileView

# The finding each of the classifier's reasons for an invalid site is.
_PROBLEM_CHECKS = {
    Problem.RECORD_ON_MOV: (CHECK_RECORD_ON_MOV,),
    Problem.RECORD_BEFORE_ENTRY: (CHECK_RECORD,),
    Problem.NO_MOV: (CHECK_MOV,),
    Problem.NO_MOV_NOR_NOP: (CHECK_MOV, CHECK_SLOT_WORD),
    Problem.SLOT_NOT_NOP: (CHECK_SLOT_WORD,),
    Problem.PREFIX_UNKNOWN: (CHECK_SCAN,),
    # Named by entry_path, with the words callers do run.
    Problem.NOT_AT_ENTRY: (),
    Problem.OTHER: (CHECK_SCAN,),
}


def _outside(word: int) -> str:
    """``isb (d5033fdf)``, saying where a word listed only by a later text is listed."""
    entry = arm64.cmodx_entry(word)
    if entry is None:
        return arm64.describe(word)
    return f"{arm64.describe(word)}, listed only by {entry.source.cite}"


def _permitted() -> str:
    return f"{arm64.CMODX_REVISION}: {', '.join(arm64.CMODX_PERMITTED)}"


def mov_missing(view: FileView, site: Site, index: int, sec: Section, r: int) -> Iterator[Finding]:
    """A pristine site under the single-slot scheme: the runtime would have
    to write the MOV (``mov-missing``)."""
    if site.state is not State.PRISTINE or view.scheme is Scheme.TWO_SLOT:
        return  # two-slot: the runtime of this scheme writes the MOV itself
    at = site.mov_offset if site.mov_offset is not None else r
    yield Finding(
        CHECK_MOV,
        view.locate(site, sec, at),
        "site is not rewritten: no mov x9, x30 before the BL slot, so the "
        "runtime would have to write it (nop -> mov x9, x30 is outside the "
        f"permitted set, {arm64.CMODX_REVISION})",
        site=index,
    )


def classifier_problem(
    view: FileView, site: Site, index: int, sec: Section, r: int
) -> Iterator[Finding]:
    """An invalid site: the finding of the classifier's ``Problem``
    (``slot-misaligned``, ``record-on-mov``, ``record``, ``mov-missing``,
    ``slot-not-nop`` or ``scan``)."""
    if site.state in (State.REWRITTEN, State.PRISTINE):
        return
    problem = site.problem or Problem.OTHER
    if problem is Problem.MISALIGNED:
        yield Finding(
            CHECK_SLOT_ALIGN,
            view.locate(site, sec, r),
            f"record points at {sec.name}+{r:#x}, which is not 4-byte aligned: "
            "the BL slot must be one aligned 32-bit word",
            site=index,
        )
        return
    for check in _PROBLEM_CHECKS[problem]:
        message = site.reason or "invalid site"
        if check == CHECK_RECORD_ON_MOV:
            message = (
                f"record points at the mov x9, x30, not at the BL slot "
                f"{sec.name}+{r + 4:#x}: the runtime would overwrite the mov"
            )
        elif check == CHECK_RECORD:
            message = f"record points before the entry ({message})"
        elif check == CHECK_SLOT_WORD and problem is Problem.NO_MOV_NOR_NOP:
            slot = site.slot_offset if site.slot_offset is not None else r
            word = view.word(sec, slot)
            message = f"BL slot holds {arm64.describe(word or 0)}, expected nop (d503201f)"
        yield Finding(check, site.location, message, site=index)


def slot_misaligned(
    view: FileView, site: Site, index: int, sec: Section, patched: int
) -> Iterator[Finding]:
    """The patched word off the 4-byte grid, or a section that may put it there."""
    if not view.linked and sec.sh_addralign < 4:
        yield Finding(
            CHECK_SLOT_ALIGN,
            view.locate(site, sec, patched),
            f"{sec.name} has sh_addralign {sec.sh_addralign}: the linker may "
            "place the BL slot off a 4-byte boundary",
            site=index,
        )
    if view.linked and view.address(sec, patched) % 4:
        yield Finding(
            CHECK_SLOT_ALIGN,
            view.locate(site, sec, patched),
            f"BL slot at {view.address(sec, patched):#x} is not 4-byte aligned",
            site=index,
        )


def prefix_misaligned(
    view: FileView, site: Site, index: int, sec: Section, f: int | None
) -> Iterator[Finding]:
    """Under 4,2 the 8-byte ops literal before the function must be 8-byte
    aligned (Linux CALL_OPS selects FUNCTION_ALIGNMENT_8B).  Where the
    classifier named the literal (CALL_OPS), ``ops_literal`` says where a
    misaligned one lands; here only an object's section that may misplace it."""
    prefix = view.prefix_words
    if site.layout is not None and site.layout.prefix_nops is not None:
        prefix = site.layout.prefix_nops
    if prefix < 2 or f is None:
        return
    literal = f - 8
    where = view.address(sec, literal) if view.linked else literal
    if where % 8 and site.literal_offset is None:
        yield Finding(
            CHECK_PREFIX_ALIGN,
            view.locate(site, sec, literal),
            f"the 8-byte ops literal before {site.function} is at "
            f"{where:#x}, not 8-byte aligned (the kernel's CALL_OPS needs it; "
            "compile with -falign-functions=8)",
            site=index,
        )
    elif not where % 8 and not view.linked and sec.sh_addralign < 8:
        yield Finding(
            CHECK_PREFIX_ALIGN,
            view.locate(site, sec, literal),
            f"{sec.name} has sh_addralign {sec.sh_addralign} < 8: the ops "
            f"literal before {site.function} may end up misaligned",
            site=index,
        )


def ops_literal(view: FileView, site: Site, index: int, sec: Section) -> Iterator[Finding]:
    """CALL_OPS: the kernel stores the ops pointer at ALIGN_DOWN(slot - 12, 8)
    whatever lies there (``ftrace_rec_set_ops()``; the literal has no symbol
    and no check of its own).  Those 8 bytes must be the site's own two
    prefix NOPs, right before its entry (a BTI C, where there is one, is the
    entry: it stands between them and the MOV)."""
    literal, entry = site.literal_offset, site.entry_offset
    if literal is None or entry is None:
        return
    words = [view.word(sec, o) for o in (literal, literal + 4)]
    if literal + 8 == entry and words == [arm64.NOP, arm64.NOP]:
        return
    shown = " ; ".join(arm64.describe(w) if w is not None else "outside the section" for w in words)
    own = site.function if view.function_offset(site) == entry else None
    who = own or f"the symbol-less entry at {sec.name}+{entry:#x}"
    owners = {view.function_at(sec, o) for o in (literal, literal + 4)} - {None, own}
    overwritten = shown + (f" (code of {', '.join(sorted(map(str, owners)))})" if owners else "")
    place = view.locate(site, sec, literal).place
    prefix = view.address(sec, entry - 8)
    if prefix % 8:
        yield Finding(
            CHECK_PREFIX_ALIGN,
            view.locate(site, sec, entry - 8),
            f"the 8-byte ops literal before {who} is at {prefix:#x}, not 8-byte aligned "
            "(the kernel's CALL_OPS needs it; compile with -falign-functions=8): the kernel "
            f"would store the ops pointer at ALIGN_DOWN(slot - 12, 8) = {place}, over "
            f"{overwritten}",
            site=index,
        )
        return
    yield Finding(
        CHECK_LITERAL,
        view.locate(site, sec, literal),
        f"the ops literal of {who} is at {place} (ALIGN_DOWN(slot - 12, 8), where "
        f"ftrace_rec_set_ops() stores it) and holds {shown}, not the two prefix NOPs "
        f"before {who}: the kernel would overwrite {overwritten} with an ops pointer",
        site=index,
    )


def relocation(
    view: FileView, site: Site, index: int, sec: Section, mov: int | None, slot: int
) -> Iterator[Finding]:
    """A relocation rewriting the MOV or the slot at link time; a second
    record, or code, pointing at the slot (or a second record at the MOV)."""
    relocs = view.relocs
    words = [("BL slot", slot)] + ([("mov x9, x30", mov)] if mov is not None else [])
    bucket = LINKED if view.linked else sec.index
    for what, off in words:
        start = view.address(sec, off) if view.linked else off
        for where, r_type in relocs.overlapping(bucket, start):
            yield Finding(
                CHECK_RELOCATION,
                view.locate(site, sec, off),
                f"{reloc_name(r_type)} ({where}) rewrites the {what} at link time",
                site=index,
            )
    if view.linked:
        return
    own = site.record.value_file_offset
    for ref in relocs.pointing_at(sec.index, slot, other_than=own):
        what = "a second record" if ref.is_record else "code"
        yield Finding(
            CHECK_RELOCATION,
            view.locate(site, sec, slot),
            f"{what} ({ref.where}, {reloc_name(ref.r_type)}) points at the BL "
            "slot: it would enter the function past the mov x9, x30",
            site=index,
        )
    if mov is not None:
        for ref in relocs.pointing_at(sec.index, mov, other_than=own):
            if ref.is_record:
                yield Finding(
                    CHECK_RELOCATION,
                    view.locate(site, sec, mov),
                    f"a second record ({ref.where}) points at the mov x9, x30: the "
                    "runtime would patch it",
                    site=index,
                )


def branch(view: FileView, site: Site, index: int, sec: Section) -> Iterator[Finding]:
    """A resolved branch (no relocation) into the site past its entry."""
    for src, offset, word in view.branches_into(index):
        target = arm64.branch_target(view.address(src, offset), word)
        assert target is not None
        into = target - view.address(sec, 0)
        what = "the BL slot" if into == site.slot_offset else "the mov x9, x30"
        yield Finding(
            CHECK_BRANCH,
            view.locate(site, sec, into),
            f"{arm64.describe(word)} at {src.name}+{offset:#x} branches to {what} of "
            f"{site.function or 'this entry'}, past the entry callers must take: that "
            "path runs without the mov x9, x30",
            site=index,
        )


def out_of_range(
    view: FileView, site: Site, index: int, sec: Section, patched: int, slot_address: int
) -> Iterator[Finding]:
    """In a linked image, the BL from the slot not reaching the trampoline."""
    known = view.trampoline
    if not view.linked or known is None or known.address is None:
        return
    distance = known.address - slot_address
    if not -arm64.BL_RANGE <= distance < arm64.BL_RANGE or distance % 4:
        yield Finding(
            CHECK_RANGE,
            view.locate(site, sec, patched),
            f"bl from the slot at {slot_address:#x} cannot reach {known} "
            f"(distance {distance:+#x}, range +-128 MiB): needs a PLT or veneer",
            site=index,
        )


def patched_outside(
    view: FileView, site: Site, index: int, sec: Section, r: int, words: tuple[int | None, ...]
) -> Finding | None:
    """A word the transitions would store over that is not code of this
    section (a hostile record may name the last bytes of its section)."""
    for o in words:
        if o is None or view.word(sec, o) is None:
            return Finding(
                CHECK_RECORD,
                view.locate(site, sec, r),
                f"the word to patch at {sec.name}+{o or 0:#x} is not inside "
                f"{sec.name} ({sec.sh_size:#x} bytes)",
                site=index,
            )
    return None


def cmodx_words(
    view: FileView, site: Site, index: int, sec: Section, t: Transition, names: dict[int, str]
) -> Iterator[Finding]:
    """A transition changing more than one word: nothing orders another
    CPU's fetches of different words."""
    if len(t.stores) > 1:
        words = "; ".join(
            f"{sec.name}+{o:#x} {view.describe(sec, o, old, names)} -> "
            f"{view.describe(sec, o, new, names)}"
            for o, old, new in t.stores
        )
        yield Finding(
            CHECK_CMODX_WORDS,
            view.locate(site, sec, t.stores[0][0]),
            f"{t.name} changes {len(t.stores)} words ({words}): nothing orders "
            "another CPU's fetches of different words",
            site=index,
        )


def cmodx_pair(
    view: FileView, site: Site, index: int, sec: Section, t: Transition, names: dict[int, str]
) -> Iterator[Finding]:
    """A store whose old or new word is outside the permitted set
    (``arm64.CMODX_PERMITTED``, each entry's citation in ``CMODX_ENTRIES``)."""
    for o, old, new in t.stores:
        if not arm64.cmodx_permitted(old, new):
            outside = [_outside(w) for w in (old, new) if not arm64.cmodx_permitted(w, w)]
            yield Finding(
                CHECK_CMODX_PAIR,
                view.locate(site, sec, o),
                f"{t.name}: {view.describe(sec, o, old, names)} -> "
                f"{view.describe(sec, o, new, names)} is not "
                f"a permitted concurrent modification ({', '.join(outside)} "
                f"outside the set of {_permitted()})",
                site=index,
            )


def entry_path(
    view: FileView,
    site: Site,
    index: int,
    sec: Section,
    entry: int,
    path_slot: int,
    patched: int,
    names: dict[int, str],
) -> Iterator[Finding]:
    """The words callers run, ``[BTI C] MOV X9,X30 ; slot``, must hold the
    patched word (and, with the single-slot scheme, be the slot after a
    MOV): a record naming any other word would have the runtime patch
    code no caller executes (issue 12: a MOV in the CALL_OPS prefix)."""
    if site.problem is Problem.NOT_AT_ENTRY:
        patched = site.record.target_offset  # the word the record names, whatever the scheme
    elif entry <= patched <= path_slot and (
        view.scheme is Scheme.TWO_SLOT
        or site.state is not State.REWRITTEN
        or (patched == path_slot and view.word(sec, path_slot - 4) == arm64.MOV_X9_X30)
    ):
        return
    where = view.locate(site, sec, patched)
    path = "; ".join(
        view.describe(sec, o, view.word(sec, o) or 0, names) for o in range(entry, path_slot + 4, 4)
    )
    who = site.function or f"{sec.name}+{entry:#x}"
    yield Finding(
        CHECK_ENTRY_PATH,
        where,
        f"callers enter {who} at {sec.name}+{entry:#x} and run {path}; the word "
        f"the runtime would patch, {sec.name}+{patched:#x}, is not the BL slot on that path",
        site=index,
    )
