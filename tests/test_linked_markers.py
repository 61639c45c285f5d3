"""Linked images as a kernel links them: marker symbols, CALL_OPS prefixes, zero records.

Regression for issue 12, found on a real Linux 6.12 vmlinux: a linker-script
marker (``_stext``, ``__softirqentry_text_start``, ...) at the address of a
CALL_OPS record (the first prefix NOP) was taken for the function entry, so
``rewrite`` put the MOV into the ops literal, and ``verify`` passed it.

Every image here comes from the real compilers and linkers; what the rewrite
must produce is derived from pyelftools' reading of the pristine image (the
typed, sized function symbols), never from ftpatch's own scan.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import ftpatch, require, sha256

pytestmark = pytest.mark.toolchain

NOP, MOV, BTI_C = 0xD503201F, 0xAA1E03E9, 0xD503245F

# Each function in its own input section, placed behind a marker as the
# kernel's vmlinux.lds.S does (_stext, __softirqentry_text_start, ...,
# each after ALIGN_FUNCTION()).
SOURCE = """\
#define SEC(s) __attribute__((section(s), noinline))
SEC(".text.first") int first(int x) { return x * 3 + 1; }
SEC(".softirqentry.text") int softirq(int x) { return first(x) ^ 5; }
SEC(".spinlock.text") int locked(int x) { return softirq(x) + 7; }
int middle(int x) { return locked(x) - 2; }
SEC(".init.text") int init_fn(int x) { return middle(x) * 2; }
int _start(void) { return init_fn(1); }
"""

LINKER_SCRIPT = """\
ENTRY(_start)
SECTIONS
{
  . = 0x400000;
  .text : {
    _stext = .;
    __pi__stext = .;
    *(.text.first)
    . = ALIGN(8);  /* ALIGN_FUNCTION() */
    __softirqentry_text_start = .;
    *(.softirqentry.text)
    __softirqentry_text_end = .;
    . = ALIGN(8);
    __lock_text_start = .;
    *(.spinlock.text)
    __lock_text_end = .;
    *(.text .text.*)
  }
  . = ALIGN(0x1000);
  _sinittext = .;
  __init_begin = .;
  .init.text : { *(.init.text) }
  _einittext = .;
  .rodata : ALIGN(8) {
    *(.rodata .rodata.*)
    __start_mcount_loc = .;
    KEEP(*(__patchable_function_entries))
    __stop_mcount_loc = .;
  }
  /DISCARD/ : { *(.note.gnu.property) *(.comment) }
}
"""

TOOLCHAINS = {
    "gcc": (["aarch64-linux-gnu-gcc"], ["aarch64-linux-gnu-ld"]),
    "clang": (["clang", "--target=aarch64-linux-gnu"], ["ld.lld"]),
}


def build(tmp: Path, toolchain: str, bti: bool) -> Path:
    cc, ld = TOOLCHAINS[toolchain]
    require(cc[0], ld[0])
    src = tmp / "markers.c"
    src.write_text(SOURCE)
    (tmp / "kernel.lds").write_text(LINKER_SCRIPT)
    obj, image = tmp / "markers.o", tmp / f"vmlinux-{toolchain}{'-bti' if bti else ''}"
    flags = ["-O2", "-g0", "-ffreestanding", "-fno-pie", "-fno-stack-protector"]
    flags += ["-fpatchable-function-entry=4,2", "-falign-functions=8"]
    if bti:
        flags.append("-mbranch-protection=bti")
    subprocess.run([*cc, *flags, "-c", "-o", obj, src], check=True, capture_output=True)
    subprocess.run(
        [*ld, "-static", "-T", tmp / "kernel.lds", "-o", image, obj],
        check=True,
        capture_output=True,
    )
    return image


class Image:
    """The image as pyelftools reads it: records, function symbols, words."""

    def __init__(self, path: Path) -> None:
        from elftools.elf.elffile import ELFFile

        self.data = path.read_bytes()
        with open(path, "rb") as f:
            elf = ELFFile(f)
            symtab = elf.get_section_by_name(".symtab")
            self.symbols = {s.name: s for s in symtab.iter_symbols()}
            self.functions = {
                s["st_value"]: s.name
                for s in symtab.iter_symbols()
                if s["st_info"]["type"] == "STT_FUNC" and s["st_size"] > 0
            }
            self.sections = [
                (s["sh_addr"], s["sh_offset"], s["sh_size"])
                for s in elf.iter_sections()
                if s["sh_flags"] & 2 and s["sh_type"] == "SHT_PROGBITS"
            ]
        start = self.symbols["__start_mcount_loc"]["st_value"]
        stop = self.symbols["__stop_mcount_loc"]["st_value"]
        self.table = self.file_offset(start)
        self.count = (stop - start) // 8

    def file_offset(self, address: int) -> int:
        for addr, offset, size in self.sections:
            if addr <= address < addr + size:
                return offset + address - addr
        raise AssertionError(f"{address:#x} is in no section")

    def record(self, i: int) -> int:
        value: int = struct.unpack_from("<Q", self.data, self.table + 8 * i)[0]
        return value

    def word(self, address: int) -> int:
        value: int = struct.unpack_from("<I", self.data, self.file_offset(address))[0]
        return value

    def markers_at(self, address: int) -> list[str]:
        return sorted(
            n
            for n, s in self.symbols.items()
            if s["st_value"] == address and s["st_info"]["type"] == "STT_NOTYPE" and n
        )


def scan(path: Path) -> dict:  # type: ignore[type-arg]
    r = ftpatch("scan", "--json", path)
    assert r.returncode == 0, r.stderr
    doc: dict = json.loads(r.stdout)["files"][0]  # type: ignore[type-arg]
    return doc


@pytest.mark.parametrize("bti", [False, True], ids=["plain", "bti"])
@pytest.mark.parametrize("toolchain", sorted(TOOLCHAINS))
def test_marker_at_callops_record_is_no_entry(tmp_path: Path, toolchain: str, bti: bool) -> None:
    image = build(tmp_path, toolchain, bti)
    before = Image(image)
    # The case of the bug: markers share the address of a record (the first
    # prefix NOP), 8 bytes before the function's typed symbol.
    shared = [before.markers_at(before.record(i)) for i in range(before.count)]
    markers = {m for names in shared for m in names}
    assert {"_stext", "__pi__stext", "_sinittext", "__init_begin"} <= markers, shared
    if toolchain == "gcc":  # Clang 14 aligns the symbol, not the prefix, so pads before it
        assert {"__softirqentry_text_start", "__lock_text_start"} <= markers, shared
    expected = []  # (record index, function, entry, mov address, slot address)
    for i in range(before.count):
        r = before.record(i)
        entry = r + 8  # -fpatchable-function-entry=4,2: two prefix NOPs
        assert entry in before.functions, f"record {i} at {r:#x}: no function at {entry:#x}"
        mov = entry + 4 if before.word(entry) == BTI_C else entry
        assert (before.word(entry) == BTI_C) == bti or before.functions[entry] != "first"
        expected.append((i, before.functions[entry], mov, mov + 4))

    r = ftpatch("rewrite", image)
    assert r.returncode == 0, r.stderr
    after = Image(image)
    for i, function, mov, slot in expected:
        assert after.word(mov) == MOV, f"{function}: no mov x9, x30 at its entry {mov:#x}"
        assert after.word(slot) == NOP, function
        assert after.record(i) == slot, f"{function}: record {after.record(i):#x} != {slot:#x}"
        r0 = before.record(i)
        assert after.word(r0) == NOP and after.word(r0 + 4) == NOP, (
            f"{function}: the ops literal before it was written"
        )
    # Only those bytes changed: the MOVs and the record words.
    changed = [k for k in range(len(before.data)) if before.data[k] != after.data[k]]
    allowed: set[int] = set()
    for i, _function, mov, _slot in expected:
        allowed.update(range(before.file_offset(mov), before.file_offset(mov) + 4))
        allowed.update(range(before.table + 8 * i, before.table + 8 * i + 8))
    assert changed and set(changed) <= allowed

    doc = scan(image)
    assert doc["counts"]["rewritten"] == before.count
    names = {s["function"] for s in doc["sites"]}
    assert names == {e[1] for e in expected}, "a marker named a site"
    v = ftpatch("verify", image)
    assert v.returncode == 0, v.stdout + v.stderr


def misrewrite(image: Path) -> Path:
    """What ftpatch wrote before the fix, placed by hand in an image otherwise
    rewritten right: at the site where _stext is, the MOV over the first
    prefix NOP and the record moved +4 to the second one; the entry NOPs stay."""
    pristine = Image(image)
    i = next(
        i for i in range(pristine.count) if "_stext" in pristine.markers_at(pristine.record(i))
    )
    r = pristine.record(i)
    assert ftpatch("rewrite", image).returncode == 0
    img = Image(image)
    data = bytearray(img.data)
    mov = img.record(i) - 4
    assert img.word(mov) == MOV and mov in (r + 8, r + 12)
    struct.pack_into("<I", data, img.file_offset(mov), NOP)
    struct.pack_into("<I", data, img.file_offset(r), MOV)
    struct.pack_into("<Q", data, img.table + 8 * i, r + 4)
    bad = image.with_name(image.name + "-misrewritten")
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize("bti", [False, True], ids=["plain", "bti"])
def test_mov_in_callops_prefix_fails_verify_and_is_refused(tmp_path: Path, bti: bool) -> None:
    image = build(tmp_path, "gcc", bti)
    bad = misrewrite(image)
    digest = sha256(bad)
    v = ftpatch("verify", "--json", bad)
    assert v.returncode == 1, v.stdout + v.stderr
    doc = json.loads(v.stdout)["files"][0]
    failing = [s for s in doc["site_results"] if not s["ok"]]
    assert [s["function"] for s in failing] == ["first"], failing
    checks = {f["check"] for f in doc["findings"] if f["severity"] == "error"}
    # verify's own judgement, not only the scan's: the patched word is not on
    # the path callers run, and the emulation from the entry never fetches it.
    assert "entry-path" in checks, checks
    assert "emulation" in checks, checks
    # And the ops literal the kernel would use lies over the code before it.
    assert checks == {"entry-path", "emulation", "ops-literal"}, checks
    text = ftpatch("verify", bad)
    assert "first-0x8" in text.stdout and "not the BL slot on that path" in text.stdout
    # rewrite and scan say the same, and nothing is written.
    w = ftpatch("rewrite", bad)
    assert w.returncode == 2
    assert w.stderr.count("\n") == 1 and "mov x9, x30 in the prefix before first" in w.stderr
    assert sha256(bad) == digest
    s = scan(bad)
    assert [x["state"] for x in s["sites"]].count("invalid") == 1


def test_zero_and_stray_records_alike_in_every_command(tmp_path: Path) -> None:
    image = build(tmp_path, "gcc", False)
    assert ftpatch("rewrite", image).returncode == 0
    img = Image(image)
    data = bytearray(img.data)
    # What the kernel's build-time sort leaves for an overridden weak function.
    struct.pack_into("<Q", data, img.table + 8, 0)
    zeroed = tmp_path / "zeroed"
    zeroed.write_bytes(bytes(data))
    doc = scan(zeroed)
    assert doc["counts"] == {"pristine": 0, "rewritten": img.count - 1, "invalid": 0, "skipped": 1}
    reason = doc["sites"][1]["reason"]
    assert "zero record" in reason
    digest = sha256(zeroed)
    note = "1 zero record left alone, as the kernel's ftrace_process_locs() skips them"
    w = ftpatch("rewrite", zeroed)
    assert w.returncode == 0, w.stderr
    assert w.stderr == f"{zeroed}: note: {note}\n"
    assert sha256(zeroed) == digest  # nothing else to do
    v = ftpatch("verify", "--json", zeroed)
    assert v.returncode == 0, v.stdout + v.stderr
    vdoc = json.loads(v.stdout)["files"][0]
    assert [f for f in vdoc["findings"] if f["site"] is not None] == []
    assert [f["message"] for f in vdoc["findings"] if f["check"] == "skipped"] == [note]
    assert [s["state"] for s in vdoc["site_results"]].count("skipped") == 1
    assert vdoc["site_results"][1]["state"] == "skipped"

    # A non-zero record outside all code: the kernel would try to patch it.
    rodata = img.symbols["__start_mcount_loc"]["st_value"]
    struct.pack_into("<Q", data, img.table + 8, rodata)
    stray = tmp_path / "stray"
    stray.write_bytes(bytes(data))
    doc = scan(stray)
    assert doc["counts"]["invalid"] == 1
    reason = doc["sites"][1]["reason"]
    assert reason == f"record points at {rodata:#x}, outside any code section"
    digest = sha256(stray)
    w = ftpatch("rewrite", stray)
    assert w.returncode == 2 and reason in w.stderr
    assert sha256(stray) == digest
    v = ftpatch("verify", stray)
    assert v.returncode == 1 and reason in v.stdout
