"""A small read-only view of an ELF64 AArch64 file: headers, sections, symbols, RELA.

Only the tables ftpatch needs, parsed with ``struct`` so that the rewrite path
starts fast (pyelftools is the reference reader the tests cross-check this
one against).  Field names are the spec's (ELF gABI, AAELF64).  Every offset
and size read from the file is checked against the file's length before use,
so a hostile header can neither raise a stray exception nor make ftpatch
allocate memory in proportion to a number it read.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import struct
import sys
from array import array
from collections.abc import Iterator
from functools import cached_property
from itertools import compress
from typing import NamedTuple

from ftpatch.elf.container import (
    HEAD_SIZE,
    Compression,
    Signature,
    appended_signature,
    compression_of,
    decompress,
)
from ftpatch.errors import MalformedElfError, NotElfError
from ftpatch.model import Location

ELFMAG = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
EM_AARCH64 = 183

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 1, 2, 3, 4
SHT_DYNAMIC, SHT_NOBITS, SHT_REL, SHT_DYNSYM = 6, 8, 9, 11
SHT_GROUP, SHT_SYMTAB_SHNDX, SHT_RELR = 17, 18, 19
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4

SHN_UNDEF, SHN_LORESERVE, SHN_ABS, SHN_COMMON, SHN_XINDEX = 0, 0xFF00, 0xFFF1, 0xFFF2, 0xFFFF

STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2

PT_LOAD, PT_DYNAMIC = 1, 2

R_AARCH64_ABS64 = 257  # AAELF64 table 5-x: S + A
R_AARCH64_RELATIVE = 1027  # Delta(S) + A

DT_NULL, DT_RELA, DT_RELASZ, DT_RELAENT = 0, 7, 8, 9
DT_RELRSZ, DT_RELR, DT_RELRENT = 35, 36, 37

EHDR_SIZE = 64
SHDR_SIZE = 64
PHDR_SIZE = 56
SYM_SIZE = 24
RELA_SIZE = 24


def _printable(raw: bytes) -> str:
    """A name from a string table, safe to print on one line.

    Names end up in one-line messages (``file: func+0x4: what``) and in
    terminals: a control character (a newline, an escape sequence) from a
    hostile string table is shown escaped, like invalid UTF-8.
    """
    text = raw.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


# NamedTuples, not frozen dataclasses, as in model.py: a symbol table holds
# thousands of entries, and defining these four as frozen dataclasses cost
# 3 ms of every start-up (this module's import: 4.9 ms -> 1.9 ms;
# benchmarks/bench_rewrite.py --startup).
class Section(NamedTuple):
    """One section header (Elf64_Shdr), with its index and name."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, as in model.Record
    name: str
    sh_type: int
    sh_flags: int
    sh_addr: int
    sh_offset: int
    sh_size: int
    sh_link: int
    sh_info: int
    sh_addralign: int
    sh_entsize: int

    @property
    def is_code(self) -> bool:
        return self.sh_type == SHT_PROGBITS and bool(self.sh_flags & SHF_EXECINSTR)


class Segment(NamedTuple):
    """One program header (Elf64_Phdr)."""

    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_filesz: int
    p_memsz: int


class Symbol(NamedTuple):
    """One symbol table entry (Elf64_Sym), with its index and name."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, as in model.Record
    name: str
    st_value: int
    st_size: int
    st_type: int
    st_bind: int
    st_shndx: int  # with SHN_XINDEX already resolved through SHT_SYMTAB_SHNDX


class Rela(NamedTuple):
    """One RELA entry (Elf64_Rela), r_info split into r_sym and r_type."""

    file_offset: int  # of this entry; r_addend is at file_offset + 16
    r_offset: int
    r_sym: int
    r_type: int
    r_addend: int


class ElfFile:
    """Read-only view over the bytes of one ELF64 AArch64 file.

    ``signature``: the module signature appended after the ELF data, which
    then ends at ``signature.elf_size`` (``size``): nothing past it is read.
    ``compression``: what the file on disk was compressed with (``data`` is
    then the decompressed bytes, and ``fd`` None).
    """

    def __init__(
        self,
        path: str,
        data: bytes | mmap.mmap,
        fd: int | None = None,
        *,
        signature: Signature | None = None,
        compression: Compression | None = None,
    ) -> None:
        self.path = path
        self.data = data
        # The file itself, when open: ``read_array`` reads the large tables
        # with pread, so their pages are copied once and never stay mapped
        # (a mapped page counts in the peak RSS as much as the copy does).
        self.fd = fd
        self.signature = signature
        self.compression = compression
        # Every range is checked against ``size``: a signature is not ELF data.
        self.size = len(data) if signature is None else signature.elf_size
        if self.size < 16 or bytes(data[:4]) != ELFMAG:
            raise NotElfError(Location(path), "not an ELF file")
        ei_class, ei_data = data[4], data[5]
        if ei_class != ELFCLASS64:
            kind = "ELF32" if ei_class == ELFCLASS32 else f"EI_CLASS {ei_class}"
            raise NotElfError(Location(path), f"not ELF64 ({kind}): ftpatch handles AArch64 ELF64")
        if ei_data not in (ELFDATA2LSB, ELFDATA2MSB):
            raise NotElfError(Location(path), f"bad EI_DATA {ei_data}")
        self.big_endian = ei_data == ELFDATA2MSB
        self.endian = ">" if self.big_endian else "<"
        if self.size < EHDR_SIZE:
            raise MalformedElfError(Location(path), "truncated ELF header")
        e = self.endian
        (
            self.e_type,
            self.e_machine,
            _version,
            self.e_entry,
            self.e_phoff,
            self.e_shoff,
            _flags,
            _ehsize,
            self.e_phentsize,
            self.e_phnum,
            self.e_shentsize,
            self.e_shnum,
            self.e_shstrndx,
        ) = struct.unpack_from(e + "HHIQQQIHHHHHH", data, 16)
        if self.e_machine != EM_AARCH64:
            raise NotElfError(
                Location(path), f"not AArch64 (e_machine {self.e_machine}, expected {EM_AARCH64})"
            )
        self._u64 = struct.Struct(e + "Q")
        self._i64 = struct.Struct(e + "q")
        self.sections = self._read_sections()
        self.segments = self._read_segments()

    def close(self) -> None:
        """Unmap and close the file (an empty file was read as bytes)."""
        if isinstance(self.data, mmap.mmap):
            self.data.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    # -- helpers ---------------------------------------------------------

    def where(self, section: str | None = None, offset: int | None = None) -> Location:
        return Location(self.path, section, offset)

    def check_range(self, file_offset: int, size: int, what: str) -> None:
        if file_offset < 0 or size < 0 or file_offset + size > self.size:
            raise MalformedElfError(
                self.where(),
                f"{what} at file offset {file_offset:#x} size {size:#x} lies outside the file "
                f"({self.size:#x} bytes)",
            )

    def u64(self, file_offset: int) -> int:
        value: int = self._u64.unpack_from(self.data, file_offset)[0]
        return value

    def pack_u64(self, value: int) -> bytes:
        return self._u64.pack(value & 0xFFFFFFFFFFFFFFFF)

    def pack_i64(self, value: int) -> bytes:
        return self._i64.pack(value)

    def read_array(self, typecode: str, file_offset: int, size: int) -> array:  # type: ignore[type-arg]
        """The whole items of ``size`` bytes at ``file_offset``, as an array in
        the file's byte order (the caller byteswaps).  The range must lie in
        the file (``check_range``)."""
        col = array(typecode)
        count = size // col.itemsize
        if count <= 0:
            return col
        nbytes = count * col.itemsize
        if self.fd is not None:
            col = array(typecode, [0]) * count  # allocated once, filled by the kernel
            try:
                done = os.preadv(self.fd, [col], file_offset)
            except OSError as exc:
                raise MalformedElfError(self.where(), f"cannot read: {exc.strerror}") from None
            if done != nbytes:  # the file shrank since it was mapped
                raise MalformedElfError(self.where(), "file changed while being read")
            return col
        with memoryview(self.data) as view:
            col.frombytes(view[file_offset : file_offset + nbytes])
        return col

    def section_bytes(self, section: Section) -> memoryview:
        if section.sh_type == SHT_NOBITS:
            return memoryview(b"")
        return memoryview(self.data)[section.sh_offset : section.sh_offset + section.sh_size]

    # -- section and program header tables --------------------------------

    def _read_sections(self) -> list[Section]:
        if self.e_shoff == 0:
            return []
        if self.e_shentsize != SHDR_SIZE:
            raise MalformedElfError(self.where(), f"e_shentsize {self.e_shentsize} is not 64")
        self.check_range(self.e_shoff, SHDR_SIZE, "section header table")
        fmt = struct.Struct(self.endian + "IIQQQQIIQQ")
        shnum = self.e_shnum
        shstrndx = self.e_shstrndx
        if shnum == 0 or shstrndx == SHN_XINDEX:  # gABI: extended numbering in section 0
            first = fmt.unpack_from(self.data, self.e_shoff)
            if shnum == 0:
                shnum = first[5]
            if shstrndx == SHN_XINDEX:
                shstrndx = first[7]
        self.check_range(self.e_shoff, shnum * SHDR_SIZE, "section header table")
        raw = [fmt.unpack_from(self.data, self.e_shoff + i * SHDR_SIZE) for i in range(shnum)]
        if not 0 <= shstrndx < shnum:
            raise MalformedElfError(self.where(), f"e_shstrndx {shstrndx} out of range")
        for i, r in enumerate(raw):
            if r[1] != SHT_NOBITS and r[1] != 0:
                self.check_range(r[4], r[5], f"section [{i}]")
        strtab = raw[shstrndx]
        str_off, str_size = strtab[4], strtab[5]
        sections = []
        for i, r in enumerate(raw):
            name = self._string(str_off, str_size, r[0], f"section [{i}] name")
            sections.append(Section(i, name, r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]))
        return sections

    def _read_segments(self) -> list[Segment]:
        if self.e_phoff == 0 or self.e_phnum == 0:
            return []
        if self.e_phentsize != PHDR_SIZE:
            raise MalformedElfError(self.where(), f"e_phentsize {self.e_phentsize} is not 56")
        self.check_range(self.e_phoff, self.e_phnum * PHDR_SIZE, "program header table")
        fmt = struct.Struct(self.endian + "IIQQQQQQ")
        segments = []
        for i in range(self.e_phnum):
            p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, _align = fmt.unpack_from(
                self.data, self.e_phoff + i * PHDR_SIZE
            )
            if p_type == PT_LOAD:
                self.check_range(p_offset, p_filesz, f"program header [{i}]")
            segments.append(Segment(p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz))
        return segments

    def _string(self, table_offset: int, table_size: int, index: int, what: str) -> str:
        # The table may be any section a hostile sh_link names, SHT_NOBITS or
        # SHT_NULL included, whose offset and size were never range-checked.
        self.check_range(table_offset, table_size, f"{what}: string table")
        if index >= table_size:
            raise MalformedElfError(self.where(), f"{what}: string index {index} out of range")
        start = table_offset + index
        end = self.data.find(b"\0", start, table_offset + table_size)
        if end < 0:
            raise MalformedElfError(self.where(), f"{what}: unterminated string")
        return _printable(bytes(self.data[start:end]))

    def section(self, index: int, what: str = "section index") -> Section:
        if not 0 <= index < len(self.sections):
            raise MalformedElfError(self.where(), f"{what} {index} out of range")
        return self.sections[index]

    def sections_named(self, name: str) -> list[Section]:
        return [s for s in self.sections if s.name == name]

    # -- symbols ---------------------------------------------------------

    @cached_property
    def symtab(self) -> Section | None:
        for s in self.sections:
            if s.sh_type == SHT_SYMTAB:
                return s
        return None

    @cached_property
    def _symtab_shndx(self) -> memoryview | None:
        tab = self.symtab
        if tab is None:
            return None
        for s in self.sections:
            if s.sh_type == SHT_SYMTAB_SHNDX and s.sh_link == tab.index:
                return self.section_bytes(s)
        return None

    @cached_property
    def _raw_symbols(self) -> list[tuple[int, int, int, int, int, int]]:
        tab = self.symtab
        if tab is None:
            return []
        if tab.sh_entsize != SYM_SIZE:
            raise MalformedElfError(self.where(tab.name), f"sh_entsize {tab.sh_entsize} is not 24")
        fmt = self.endian + "IBBHQQ"
        return list(struct.iter_unpack(fmt, self.section_bytes(tab)[: tab.sh_size // 24 * 24]))

    @property
    def raw_symbols(self) -> list[tuple[int, int, int, int, int, int]]:
        """(st_name, st_info, st_other, st_shndx, st_value, st_size) per symbol."""
        return self._raw_symbols

    @property
    def symbol_count(self) -> int:
        return len(self._raw_symbols)

    def symbol(self, index: int) -> Symbol:
        raw = self._raw_symbols
        if not 0 <= index < len(raw):
            raise MalformedElfError(self.where(), f"symbol index {index} out of range")
        st_name, st_info, _other, st_shndx, st_value, st_size = raw[index]
        if st_shndx == SHN_XINDEX:
            xtab = self._symtab_shndx
            if xtab is None or (index + 1) * 4 > len(xtab):
                raise MalformedElfError(self.where(), f"symbol {index}: SHN_XINDEX without table")
            st_shndx = struct.unpack_from(self.endian + "I", xtab, index * 4)[0]
        tab = self.symtab
        assert tab is not None
        strtab = self.section(tab.sh_link, "symtab sh_link")
        name = self._string(strtab.sh_offset, strtab.sh_size, st_name, f"symbol {index} name")
        if st_info & 0xF == STT_SECTION and not name and 0 < st_shndx < len(self.sections):
            name = self.sections[st_shndx].name
        return Symbol(index, name, st_value, st_size, st_info & 0xF, st_info >> 4, st_shndx)

    @cached_property
    def _symbol_strings(self) -> bytes:
        tab = self.symtab
        if tab is None:
            return b""
        strtab = self.section(tab.sh_link, "symtab sh_link")
        return bytes(self.data[strtab.sh_offset : strtab.sh_offset + strtab.sh_size])

    def symbol_name(self, index: int) -> str:
        """Name of symbol ``index`` (hot path: no Symbol object, strtab cached)."""
        raw = self._raw_symbols
        if not 0 <= index < len(raw):
            raise MalformedElfError(self.where(), f"symbol index {index} out of range")
        strings = self._symbol_strings
        start = raw[index][0]
        end = strings.find(b"\0", start)
        if start >= len(strings) or end < 0:
            return self.symbol(index).name  # raises the precise error
        return _printable(strings[start:end])

    def symbol_values(self, *names: str) -> dict[str, int]:
        """``st_value`` of the first defined symbol named each of ``names``.

        Names not defined (or only undefined, ``SHN_UNDEF``) are absent.
        Compares the string table's bytes: no Symbol object per symbol.
        """
        wanted = {name.encode(): name for name in names}
        found: dict[str, int] = {}
        strings = self._symbol_strings
        for st_name, _info, _other, st_shndx, st_value, _size in self._raw_symbols:
            if st_shndx == SHN_UNDEF or st_name >= len(strings):
                continue
            end = strings.find(b"\0", st_name)
            name = wanted.get(strings[st_name:end] if end >= 0 else strings[st_name:])
            if name is not None and name not in found:
                found[name] = st_value
                if len(found) == len(wanted):
                    break
        return found

    def iter_symbols(self) -> Iterator[Symbol]:
        for i in range(len(self._raw_symbols)):
            yield self.symbol(i)

    def symbol_shndx(self, index: int) -> int:
        """st_shndx of symbol ``index`` without decoding its name (hot path)."""
        raw = self._raw_symbols
        if not 0 <= index < len(raw):
            raise MalformedElfError(self.where(), f"symbol index {index} out of range")
        shndx: int = raw[index][3]
        if shndx == SHN_XINDEX:
            return self.symbol(index).st_shndx
        return shndx

    def symbol_value(self, index: int) -> int:
        value: int = self._raw_symbols[index][4]
        return value

    @cached_property
    def symbol_words(self) -> array:  # type: ignore[type-arg]
        """The symbol table as 64-bit words in host order, three per symbol:
        word 0 packs st_name, st_info, st_other, st_shndx (see
        ``SYMBOL_SHIFTS``), word 1 is st_value, word 2 st_size.  Read once
        (pread) for every columnar reader: a vmlinux.o has tens of thousands."""
        tab = self.symtab
        if tab is None:
            return array("Q")
        if tab.sh_entsize != SYM_SIZE:
            raise MalformedElfError(self.where(tab.name), f"sh_entsize {tab.sh_entsize} is not 24")
        words = self.read_array("Q", tab.sh_offset, tab.sh_size // SYM_SIZE * SYM_SIZE)
        if self.big_endian != (sys.byteorder == "big"):
            words.byteswap()
        return words

    def drop_symbol_words(self) -> None:
        """Free ``symbol_words`` (read again if asked for again): the rewrite
        of a big object needs its memory back once the columns are made."""
        self.__dict__.pop("symbol_words", None)

    @property
    def symbol_shifts(self) -> tuple[int, int, int]:
        """Shifts of st_name, st_info and st_shndx in a symbol's word 0."""
        return (32, 24, 0) if self.big_endian else (0, 32, 48)

    @cached_property
    def function_entries(self) -> dict[int, tuple[array, array, array]]:  # type: ignore[type-arg]
        """Per section index: the sorted ``st_value`` of its function entries
        (array ``Q``), the symbol index naming each (array ``I``), and where
        each function ends, ``st_value + st_size`` (array ``Q``: of several
        symbols at one address, the largest extent).

        A function entry is where callers enter: a typed (STT_FUNC), sized
        (st_size > 0) symbol defined in a section, on the 4-byte grid.
        Linker-script markers (``_stext``, ``_sinittext``,
        ``__*_text_start``: STT_NOTYPE, size 0) and absolute symbols share
        addresses with functions and prefix NOPs but are never entries
        (issue 12: taking ``_stext`` for the entry put the MOV of a CALL_OPS
        site into its ops literal).  Mapping symbols (``$x``: AAELF64 5.5.4)
        are left out.  Of several symbols at one address, a global one names
        it.  Columns, not per-symbol objects: a vmlinux.o has tens of
        thousands, and this is on the rewrite's path.
        """
        tab = self.symtab
        if tab is None:
            return {}
        strtab = self.section(tab.sh_link, "symtab sh_link")
        strtab_off, strtab_size = strtab.sh_offset, strtab.sh_size
        self.check_range(strtab_off, strtab_size, "symbol string table")
        words = self.symbol_words
        name_shift, info_shift, shndx_shift = self.symbol_shifts
        data = self.data
        # One key per entry, sorted: st_value, then global before local, then
        # the symbol index (the first of several names at one address names it).
        found: dict[int, list[int]] = {}
        # Sized symbols only, skipped at C speed (compress); their fields by
        # zip over the columns (copies, freed on return).
        sizes = words[2::3]
        for index, w, value in zip(
            compress(range(len(sizes)), sizes),
            compress(words[0::3], sizes),
            compress(words[1::3], sizes),
            strict=True,
        ):
            if (w >> info_shift) & 0xF != STT_FUNC:
                continue
            st_name = (w >> name_shift) & 0xFFFFFFFF
            if value & 3 or st_name == 0 or st_name >= strtab_size:
                continue
            if data[strtab_off + st_name] == 0x24:  # "$": mapping symbol
                continue
            st_shndx = (w >> shndx_shift) & 0xFFFF
            if st_shndx == SHN_XINDEX:
                st_shndx = self.symbol(index).st_shndx
            elif st_shndx == SHN_UNDEF or st_shndx >= SHN_LORESERVE:
                continue
            local = (w >> info_shift) >> 4 & 0xF == STB_LOCAL
            keys = found.get(st_shndx)
            if keys is None:
                keys = found[st_shndx] = []
            keys.append(value << 33 | local << 32 | index)
        out: dict[int, tuple[array, array, array]] = {}  # type: ignore[type-arg]
        for shndx, keys in found.items():
            keys.sort()
            starts, symbols, stops = array("Q"), array("I"), array("Q")
            last = -1
            for key in keys:
                value = key >> 33
                index = key & 0xFFFFFFFF
                end = min(value + words[3 * index + 2], 0xFFFF_FFFF_FFFF_FFFF)
                if value != last:
                    starts.append(value)
                    symbols.append(index)
                    stops.append(end)
                    last = value
                elif end > stops[-1]:
                    stops[-1] = end
            out[shndx] = (starts, symbols, stops)
        return out

    # -- relocations -----------------------------------------------------

    def relas_for(self, target: Section) -> list[Section]:
        return [
            s
            for s in self.sections
            if s.sh_type in (SHT_RELA, SHT_REL) and s.sh_info == target.index
        ]

    def iter_rela(self, rela: Section) -> Iterator[Rela]:
        if rela.sh_entsize != RELA_SIZE:
            raise MalformedElfError(
                self.where(rela.name), f"sh_entsize {rela.sh_entsize} is not {RELA_SIZE}"
            )
        fmt = struct.Struct(self.endian + "QQq")
        base = rela.sh_offset
        for n, (r_offset, r_info, r_addend) in enumerate(
            fmt.iter_unpack(self.section_bytes(rela)[: rela.sh_size // RELA_SIZE * RELA_SIZE])
        ):
            yield Rela(base + n * RELA_SIZE, r_offset, r_info >> 32, r_info & 0xFFFFFFFF, r_addend)

    # -- addresses (linked images) -----------------------------------------

    def address_to_file_offset(self, address: int, size: int = 4) -> int | None:
        for seg in self.segments:
            if (
                seg.p_type == PT_LOAD
                and seg.p_vaddr <= address
                and address + size <= (seg.p_vaddr + seg.p_filesz)
            ):
                return seg.p_offset + (address - seg.p_vaddr)
        return None

    def section_at_address(self, address: int) -> Section | None:
        for s in self.sections:
            if (
                s.sh_flags & SHF_ALLOC
                and s.sh_type != SHT_NOBITS
                and s.sh_addr <= address < s.sh_addr + s.sh_size
            ):
                return s
        return None


_NOT_REGULAR = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _require_regular(name: str, st_mode: int) -> None:
    if stat.S_ISREG(st_mode):
        return
    if stat.S_ISDIR(st_mode):
        raise NotElfError(Location(name), "is a directory")
    kind = _NOT_REGULAR.get(stat.S_IFMT(st_mode), "of an unknown type")
    raise NotElfError(Location(name), f"not a regular file ({kind})")


def open_regular(path: str, name: str | None = None) -> int:
    """Open ``path`` read-only; refuse at once anything but a regular file.

    readelf's habit ("is not an ordinary file"): opening a FIFO waits for a
    writer and reading it waits for data, forever in a build; a device would
    be read as if it were an object.  The stat refuses before anything is
    opened; O_NONBLOCK and the fstat cover a name replaced in between.
    ``name`` is the file as the user typed it, for messages.
    """
    shown = path if name is None else name
    try:
        _require_regular(shown, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise NotElfError(Location(shown), f"cannot open: {exc.strerror}") from None
    try:
        _require_regular(shown, os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_elf(path: str, name: str | None = None, *, compressed: bool = True) -> ElfFile:
    """Map ``path`` read-only and parse it.  The caller closes it (``close``).

    ``name`` is how messages name the file (default ``path``): the path as the
    user typed it when ``path`` is a symlink's resolved target.  A compressed
    file (elf/container.py) is decompressed into memory, unless
    ``compressed`` is false: then it is refused before any of it is
    decompressed (the rewrite says why first, under its lock).  An appended
    module signature is found and left out of the ELF data
    (``ElfFile.signature``).
    """
    shown = path if name is None else name
    where = Location(shown)
    fd = open_regular(path, shown)
    try:
        size = os.fstat(fd).st_size
        data: mmap.mmap | bytes
        if size == 0:
            data = b""
        else:
            data = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        os.close(fd)
        raise NotElfError(where, f"cannot read: {exc}") from None
    try:
        kind = compression_of(bytes(data[:HEAD_SIZE]))
        if kind is not None:
            if not compressed:
                raise NotElfError(where, f"{kind.value}-compressed, not ELF data")
            raw = data
            data = decompress(raw, kind, where)
            if isinstance(raw, mmap.mmap):
                raw.close()
            os.close(fd)
            fd = -1
        signature = appended_signature(data, len(data), where)
        return ElfFile(
            shown,
            data,
            fd if fd >= 0 else None,
            signature=signature,
            compression=kind,
        )
    except BaseException:
        if isinstance(data, mmap.mmap):
            data.close()
        if fd >= 0:
            os.close(fd)
        raise


@contextlib.contextmanager
def mapped_elf(path: str, name: str | None = None, *, compressed: bool = True) -> Iterator[ElfFile]:
    """``open_elf`` for one block: the map is closed on the way out."""
    elf = open_elf(path, name, compressed=compressed)
    try:
        yield elf
    finally:
        elf.close()
