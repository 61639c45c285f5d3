"""The CMODX permitted set: each entry cites the text it rests on, and an
entry listed only by a later issue of the Arm ARM (ISB) is not permitted by
default.  Built on the real-compiler fixture obj/gcc-plain-O2.o, rewritten,
with add3's BL slot hand-edited (no compiler puts an ISB or BRK there)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import rewritten
from test_verify import entry_of, put_word, word_at

from ftpatch import arm64
from ftpatch.verify import verify_file
from ftpatch.verify.render import report_dict

NOP = 0xD503201F  # nop
ISB = 0xD5033FDF  # isb
BRK_0 = 0xD4200000  # brk #0


def test_every_entry_cites_its_own_text() -> None:
    seen = set()
    for entry in arm64.CMODX_ENTRIES:
        src = entry.source
        assert src.document and src.section and src.quoted_by and src.cite, entry
        assert entry.name not in seen
        seen.add(entry.name)
        # the entry is in the list of the text it cites (BRK is that text's BKPT)
        assert entry.name in src.listed or (entry.name == "BRK" and "BKPT" in src.listed)
    assert set(arm64.CMODX_PERMITTED) <= seen
    # every class the decoder recognises has an entry
    words = [NOP, ISB, BRK_0, 0x94000001, 0x14000001, 0xD4000002, 0xD4000003, 0xD4000001]
    assert {arm64.cmodx_class(w) for w in words} <= seen


def test_default_set_is_the_earliest_list() -> None:
    earliest = arm64.CMODX_SOURCES[0]
    assert "A.a" in earliest.cite
    names = {"BRK" if n == "BKPT" else n for n in earliest.listed}
    assert set(arm64.CMODX_PERMITTED) == names
    assert "ISB" not in arm64.CMODX_PERMITTED
    assert all(e.permitted == (e.source is earliest) for e in arm64.CMODX_ENTRIES)


def slot_with(tmp_path: Path, word: int) -> Path:
    path = rewritten(tmp_path, "obj/gcc-plain-O2.o")
    slot = entry_of(path, "add3").slot
    assert word_at(path, slot) == NOP
    put_word(path, slot, word)
    return path


def test_isb_rests_on_a_later_text_and_is_not_permitted_by_default(tmp_path: Path) -> None:
    report = verify_file(str(slot_with(tmp_path, ISB)))
    pairs = [f for f in report.errors if f.check == "cmodx-pair"]
    assert pairs, [f.message for f in report.errors]
    assert {f.location.symbol for f in pairs} == {"add3"}
    enable = [f.message for f in pairs if f.message.startswith("enable:")]
    assert enable and "isb (d5033fdf) -> bl" in enable[0]
    assert "listed only by ARM DDI 0487 after A.a" in enable[0]
    assert "ARM DDI 0487 A.a, B2.6.5" in enable[0]


def test_brk_rests_on_the_earliest_text_and_is_permitted(tmp_path: Path) -> None:
    # the control: a word of the A.a list (as BKPT) in the same place is no cmodx-pair
    report = verify_file(str(slot_with(tmp_path, BRK_0)))
    assert "slot-not-nop" in {f.check for f in report.errors}
    assert not [f for f in report.errors if f.check == "cmodx-pair"]


def test_json_names_each_entrys_citation(tmp_path: Path) -> None:
    report = verify_file(str(rewritten(tmp_path, "obj/gcc-plain-O2.o")))
    doc = json.loads(json.dumps(report_dict(report)))["cmodx"]
    entries = {e["name"]: e for e in doc["entries"]}
    assert set(doc["permitted"]) == {n for n, e in entries.items() if e["permitted"]}
    for e in entries.values():
        src = doc["sources"][e["source"]]
        assert src["document"] and src["section"] and src["quoted_by"]
    assert entries["ISB"]["permitted"] is False
    assert doc["sources"][entries["ISB"]["source"]]["listed"].count("ISB") == 1
    assert "A.a" in doc["sources"][entries["NOP"]["source"]]["cite"]
