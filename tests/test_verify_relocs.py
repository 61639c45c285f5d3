"""verify's relocation checks (verify/relocs.py) on a real compiler's object:
a relocation rewriting a site's words at link time, and code pointing at a
BL slot.  obj/gcc-plain-O2.o is rewritten, then one of its .rela.text
entries is moved with pyelftools-computed offsets (not ftpatch's reader)."""

from __future__ import annotations

import struct
from pathlib import Path

from conftest import rewritten
from elftools.elf.elffile import ELFFile
from test_verify import entry_of

from ftpatch.verify import verify_file


def rela_text(path: Path) -> list[tuple[int, str, int, int]]:
    """(file offset, type name, r_offset, symbol value) of each .rela.text entry."""
    from elftools.elf.descriptions import describe_reloc_type

    with open(path, "rb") as f:
        elf = ELFFile(f)
        sec = elf.get_section_by_name(".rela.text")
        symtab = elf.get_section(sec["sh_link"])
        return [
            (sec["sh_offset"] + n * 24, describe_reloc_type(r["r_info_type"], elf),
             r["r_offset"], symtab.get_symbol(r["r_info_sym"])["st_value"])
            for n, r in enumerate(sec.iter_relocations())
        ]


def poke(path: Path, file_offset: int, value: int, fmt: str = "<Q") -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, file_offset, value)
    path.write_bytes(bytes(data))


def relocation_messages(path: Path) -> list[str]:
    return [f.message for f in verify_file(str(path)).errors if f.check == "relocation"]


def test_relocation_over_the_slot_and_the_mov(tmp_path: Path) -> None:
    path = rewritten(tmp_path, "obj/gcc-plain-O2.o")
    add3 = entry_of(path, "add3")
    slot = add3.slot - add3.section_offset
    entries = rela_text(path)
    n = len(entries) - 1
    file_offset, type_name, _r_offset, _value = entries[n]
    assert type_name == "R_AARCH64_CALL26"
    # 4 bytes written from slot - 2: the last half of the MOV, the first of the slot
    poke(path, file_offset, slot - 2)
    messages = relocation_messages(path)
    assert any(f"R_AARCH64_CALL26 (.rela.text entry {n}) rewrites the BL slot" in m
               for m in messages), messages
    assert any(f"(.rela.text entry {n}) rewrites the mov x9, x30" in m for m in messages)
    # 4 bytes written from slot + 4: the word after the slot; neither site word
    poke(path, file_offset, slot + 4)
    assert relocation_messages(path) == []


def test_code_pointing_at_a_slot(tmp_path: Path) -> None:
    path = rewritten(tmp_path, "obj/gcc-plain-O2.o")
    entries = rela_text(path)
    n, (file_offset, type_name, _r_offset, value) = next(
        (n, e) for n, e in enumerate(entries) if e[1] == "R_AARCH64_CALL26" and e[3] > 0)
    # weak_hook has no BTI: mov x9, x30 at its symbol, the slot 4 bytes on
    poke(path, file_offset + 16, 4, "<q")
    messages = relocation_messages(path)
    assert any(f"code (.rela.text entry {n}, {type_name}) points at the BL slot" in m
               for m in messages), messages
    poke(path, file_offset + 16, 0, "<q")  # back to the entry: an ordinary call
    assert relocation_messages(path) == []
    assert value
