"""Emulated proof of concurrent patching of one function entry, with unicorn.

The engine knows nothing about ELF.  Its input (:class:`Case`) is the words of
a function entry at their addresses, the stores a runtime patcher makes to
them (old -> new, in the patcher's order) and the addresses of the
trampolines the BL words call.  A caller stub does ``BL entry``; each
trampoline honours the kernel's ``ftrace_caller`` contract (entry-ftrace.S):
it logs (X9, X30), restores X30 from X9 and returns to the old X30.

Model (the Arm ARM's concurrent modification rules, ``arm64.CMODX_ENTRIES``,
and the herd7 ``-variant ifetch`` results in ARM64-FTRACE.md): the patcher's
stores take effect between the executing CPU's instruction fetches, and with
no synchronisation between fetches of different words each fetch of a changed
word may see its old or its new value. The engine explores every such choice,
depth first, re-running the entry from the caller stub for each one, and
checks at the first body instruction that X30 is the caller's return address,
that SP and X19-X29 are unchanged, and that a trampoline ran at most once and
saw X9 = the caller's return address. A violating interleaving is re-run with
a per-instruction trace so that it can be printed step by step.

Sharing (issue 15): running unicorn costs far more than judging a result, and
most entries of a file are the same few words.  ``explore`` records what a run
fetched (UC_HOOK_CODE over everything) and read (UC_HOOK_MEM_READ), and a later
case reuses the result only when every recorded byte, at the same distance
from its own start, is the same, along with its stores, its entry and its
length.  Reuse across places is exact only for code whose effect moves with
it, so a result is shared only when every word the runs fetched is
``placement_free`` and every branch stays inside the entry words or calls a
trampoline; anything else (a fault outside the case, a load, ADR, a branch
elsewhere) keeps its emulation to itself.  See ``_share_key`` and ``_shareable``.

unicorn, keystone and capstone are imported inside the functions that use
them: nothing on the rewrite path imports this module's dependencies.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ftpatch import arm64
from ftpatch.verify.data import (
    Case,
    Counterexample,
    Emulation,
    Exploration,
    Interleaving,
    Step,
)
from ftpatch.verify.data import Store as Store  # re-exported: tests build cases with it

PAGE = 0x1000
# Fixed places of the emulator's own data, far from any code address that
# ftpatch gives the engine (synthetic addresses of objects start at 1 GiB,
# Linux user images sit low and kernel images at the top of the address space).
STACK_BASE = 0x7F00_0000_0000
STACK_SIZE = 0x10000
STACK_POINTER = STACK_BASE + 0x8000  # 16-byte aligned, room above and below
LOG_BASE = 0x7F00_0001_0000  # u64 count, then 32-byte entries: x9, x30, trampoline
LOG_SIZE = 0x1000
LOG_ENTRY = 32
MAX_LOG_ENTRIES = LOG_SIZE // LOG_ENTRY - 1

# Initial register values: distinct, recognisable, never a code address.
GARBAGE_X9 = 0xDEAD_BEEF_0000_0009  # what X9 holds when nothing saved LR in it
CALLER_LR = 0xC0DE_0000_0000_0030  # LR of the caller stub itself (never returned to)


def _sentinel(reg: int) -> int:
    return 0x5A5A_0000_0000_0000 | (reg << 8)


# Emulation results an engine keeps for reuse; past this it stops adding
# (a file of all-different entries then costs what it cost before sharing).
MAX_SHARED = 4096

_HINTS = frozenset(
    {
        0xD503201F,  # nop
        0xD503241F,  # bti
        0xD503245F,  # bti c
        0xD503249F,  # bti j
        0xD50324DF,  # bti jc
    }
)
_MOV_X_MASK, _MOV_X = 0xFFE0FFE0, 0xAA0003E0  # mov xd, xm (orr xd, xzr, xm)
_BR_MASK = 0xFFFFFC1F
_BR_WORDS = frozenset({0xD61F0000, 0xD63F0000, 0xD65F0000})  # br, blr, ret xn


def placement_free(word: int) -> bool:
    """Whether ``word`` does the same wherever the code sits, up to moving it.

    The judge compares addresses (the caller's return address) with what the
    registers hold at the end; a result may move with the code only when
    every value is either an initial register value or an address that moved
    with it.  So: hints that only mark landing pads (NOP, BTI; not PACIASP,
    whose MAC covers X30), register moves, B/BL with an immediate (target and
    link value move with the code; ``_shareable`` checks where they lead) and
    BR/BLR/RET.  Not ADR/ADRP, not arithmetic, not MOVZ nor loads: a constant
    or a loaded word could equal the return address at one place and not at
    another.  The initial values never can: the return address is +4 into
    the caller stub's page, and sentinels end in 00, X9 in 09, the stub's LR
    in 30 (``_share_key`` also keeps cases away from the addresses they name).
    """
    return (
        word in _HINTS
        or word & _MOV_X_MASK == _MOV_X
        or word & arm64.BRANCH_MASK in (arm64.B_OPCODE, arm64.BL_OPCODE)
        or word & _BR_MASK in _BR_WORDS
    )


# The kernel's contract, entry-ftrace.S reduced to what the check needs: the
# log write stands for "trace this call"; the last three instructions are the
# part ftpatch relies on.  X16/X17 (IP0/IP1) are free to clobber (AAPCS64).
CONTRACT_TRAMPOLINE = """
tramp:
    movz x16, #{log0}
    movk x16, #{log1}, lsl #16
    movk x16, #{log2}, lsl #32
    ldr  x17, [x16]
    add  x17, x17, #1
    str  x17, [x16]
    add  x17, x16, x17, lsl #5
    stp  x9, x30, [x17]
    adr  x16, tramp
    str  x16, [x17, #16]
    mov  x16, x30
    mov  x30, x9
    ret  x16
"""


# CONTRACT_TRAMPOLINE as keystone assembles it with LOG_BASE filled in, so
# that verify does not load keystone (5 MiB of its peak RSS) for the one
# trampoline it always uses; tests/test_verify_memory.py assembles the source
# and compares.
CONTRACT_WORDS = (
    0xD2800010,  # mov x16, #0
    0xF2A00030,  # movk x16, #1, lsl #16
    0xF2CFE010,  # movk x16, #0x7f00, lsl #32
    0xF9400211,  # ldr x17, [x16]
    0x91000631,  # add x17, x17, #1
    0xF9000211,  # str x17, [x16]
    0x8B111611,  # add x17, x16, x17, lsl #5
    0xA9007A29,  # stp x9, x30, [x17]
    0x10FFFF10,  # adr x16, tramp
    0xF9000A30,  # str x16, [x17, #0x10]
    0xAA1E03F0,  # mov x16, x30
    0xAA0903FE,  # mov x30, x9
    0xD65F0200,  # ret x16
)


def trampoline_source(body: str = CONTRACT_TRAMPOLINE) -> str:
    """``body`` with the log address filled in (``{log0}`` .. ``{log2}``)."""
    return body.format(
        log0=LOG_BASE & 0xFFFF, log1=(LOG_BASE >> 16) & 0xFFFF, log2=(LOG_BASE >> 32) & 0xFFFF
    )


def assemble(source: str) -> tuple[int, ...]:
    """Position-independent A64 ``source`` assembled with keystone, as words."""
    import keystone

    ks = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
    encoding, _count = ks.asm(source, 0)
    code = bytes(encoding or b"")
    if not code or len(code) % 4:
        raise ValueError("trampoline assembled to no whole instruction words")
    return tuple(arm64.read_word(code, i) for i in range(0, len(code), 4))


@dataclass
class _Run:
    schedule: tuple[bool, ...]
    taken: list[tuple[int, bool]] = field(default_factory=list)
    current: dict[int, int] = field(default_factory=dict)  # address -> word in memory
    pending: tuple[int, bool] | None = None  # (address, new?) of a fetch being restarted
    resume: int | None = None
    steps: list[Step] | None = None


@dataclass(frozen=True)
class _Shared:
    """One emulation's result, kept for cases whose recorded bytes match."""

    emulation: Emulation
    interleavings: int
    failing: int
    schedules: tuple[tuple[bool, ...], ...]  # the first failing ones, to re-run traced
    truncated: bool
    fetched_changed: bool


# What a case must match before its bytes are compared: length, entry, stores
# (relative to its start, BL words to a trampoline as -1 - its index), the
# patcher's ordering, the number of trampolines and the engine's limits.
_Key = tuple[int, int, tuple[tuple[int, int, int], ...], bool, int, int, int, int]


_DATA_END = LOG_BASE + LOG_SIZE  # the emulator's stack and log end here
# 4 GiB windows around the initial register values: a case there could hold
# an address equal to one of them (placement_free), so it does not share.
_MAGIC_WINDOWS = frozenset(
    (value >> 32) + d
    for value in (_sentinel(0), GARBAGE_X9, CALLER_LR)
    for d in (-1, 0, 1)
)


def _bl_target(address: int, word: int) -> int:
    """``arm64.bl_target``, inlined for the per-case key."""
    imm26 = word & 0x3FFFFFF
    return address + 4 * (imm26 - 0x4000000 if imm26 & 0x2000000 else imm26)


class _Picker:
    """The words at ``indexes``, as one hashable value (itemgetter, any length)."""

    __slots__ = ("_get", "indexes")

    def __init__(self, indexes: tuple[int, ...]) -> None:
        self.indexes = indexes
        self._get: Any = operator.itemgetter(*indexes) if indexes else None

    def __call__(self, words: tuple[int, ...]) -> Any:
        return self._get(words) if self._get is not None else ()


_CALLEE_SAVED = tuple(range(19, 29))  # x19..x28; x29 (FP) checked with them


class Engine:
    """One unicorn instance reused for every case (memory is re-written per case)."""

    def __init__(
        self,
        trampoline: str = CONTRACT_TRAMPOLINE,
        *,
        max_steps: int = 512,
        max_interleavings: int = 4096,
        max_counterexamples: int = 1,
    ) -> None:
        import unicorn
        from unicorn import arm64_const as a

        self._a = a
        uc_class: Any = getattr(unicorn, "Uc")  # noqa: B009 (untyped, not re-exported)
        self._uc: Any = uc_class(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)
        self._tramp = (
            CONTRACT_WORDS
            if trampoline == CONTRACT_TRAMPOLINE
            else assemble(trampoline_source(trampoline))
        )
        self._tramp_bytes = b"".join(arm64.word_bytes(w) for w in self._tramp)
        self.max_steps = max_steps
        self.max_interleavings = max_interleavings
        self.max_counterexamples = max_counterexamples
        self._mapped: set[int] = set()
        self._map(STACK_BASE, STACK_SIZE, data=True)
        self._map(LOG_BASE, LOG_SIZE, data=True)
        self._xregs = [getattr(a, f"UC_ARM64_REG_X{i}") for i in range(29)]
        self._x29, self._x30 = a.UC_ARM64_REG_X29, a.UC_ARM64_REG_X30
        self._sp, self._pc, self._x9 = a.UC_ARM64_REG_SP, a.UC_ARM64_REG_PC, a.UC_ARM64_REG_X9
        self._checked = [self._xregs[i] for i in _CALLEE_SAVED] + [self._x29]
        self._initial = self._initial_context()
        self._cs: Any = None  # capstone, for traces only
        self._case: Case | None = None
        self._run: _Run | None = None
        self._stores_at: dict[int, int] = {}
        self._memory: dict[int, int] = {}  # changed word address -> word now in memory
        # The contract trampoline's one address-dependent instruction, ADR,
        # only fills the log's third field, which no check reads; any other
        # trampoline must pass ``placement_free`` word by word to be shared.
        self._tramp_trusted = trampoline == CONTRACT_TRAMPOLINE
        # key -> [(the recorded words' picker, {their values: result})]
        self._shared: dict[_Key, list[tuple[_Picker, dict[Any, _Shared]]]] = {}
        self._tramp_span = len(self._tramp_bytes)
        self._shared_count = 0
        self._fetched: set[int] = set()
        self._reads: list[tuple[int, int]] = []
        self.cases = 0  # explore() calls
        self.runs = 0  # emulator runs (interleavings explored, traces re-run)
        self.emulations = 0  # explorations that ran (the rest reused one)
        self.reused = 0
        self.retrace_mismatches = 0  # a reused result its own trace did not confirm

    @property
    def trampoline_words(self) -> tuple[int, ...]:
        return self._tramp

    # -- memory ------------------------------------------------------------

    def _map(self, address: int, size: int, *, data: bool = False) -> None:
        first = address & ~(PAGE - 1)
        last = (address + size - 1) & ~(PAGE - 1)
        if not data and first < LOG_BASE + LOG_SIZE and last >= STACK_BASE:
            raise ValueError(f"code address {address:#x} collides with the emulator's data")
        for page in range(first, last + PAGE, PAGE):
            if page not in self._mapped:
                self._uc.mem_map(page, PAGE)
                self._mapped.add(page)

    @staticmethod
    def _pages(address: int, size: int) -> set[int]:
        first = address & ~(PAGE - 1)
        last = (address + size - 1) & ~(PAGE - 1)
        return set(range(first, last + PAGE, PAGE))

    def caller_for(self, case: Case) -> int:
        """A page for the caller stub near the entry, away from code and trampolines."""
        busy = self._pages(case.start, 4 * len(case.words) + 4)
        for t in case.trampolines:
            busy |= self._pages(t, len(self._tramp_bytes))
        for s in case.stores:
            busy |= self._pages(s.address, 4)
        base = case.entry & ~(PAGE - 1)
        for k in range(16, 4096, 16):
            for candidate in (base - k * PAGE, base + k * PAGE):
                if candidate >= PAGE and candidate not in busy:
                    return candidate
        raise ValueError(f"no room for a caller stub near {case.entry:#x}")

    def _load(self, case: Case, caller: int) -> None:
        uc = self._uc
        regions = [(case.start, 4 * len(case.words) + 4), (caller, 8)]
        regions += [(t, len(self._tramp_bytes)) for t in case.trampolines]
        regions += [(s.address, 4) for s in case.stores]
        pages: set[int] = set()
        for address, size in regions:
            self._map(address, size)
            pages |= self._pages(address, size)
        zero = bytes(PAGE)  # 0x00000000 is UDF: stray execution faults
        for page in pages:
            uc.mem_write(page, zero)
        for t in case.trampolines:
            uc.mem_write(t, self._tramp_bytes)
        uc.mem_write(caller, arm64.word_bytes(arm64.encode_bl(caller, case.entry)))
        self._write_code(case)
        self._memory = {s.address: s.old for s in case.stores}
        # mem_write does not always drop translations of the code it overwrites
        # (a previous case's caller stub survived): start each case afresh.
        uc.ctl_flush_tb()

    def _write_code(self, case: Case) -> None:
        self._uc.mem_write(case.start, b"".join(arm64.word_bytes(w) for w in case.words))
        for s in case.stores:
            self._uc.mem_write(s.address, arm64.word_bytes(s.old))

    # -- one run -------------------------------------------------------------

    def _hook(self, uc: Any, address: int, size: int, _data: Any) -> None:
        run, case = self._run, self._case
        assert run is not None and case is not None
        index = self._stores_at.get(address)
        version: str | None = None
        if index is not None:
            if run.pending is not None and run.pending[0] == address:
                new = run.pending[1]
                run.pending = None
            else:
                d = len(run.taken)
                new = run.schedule[d] if d < len(run.schedule) else False
                if not new and case.ordered and any(k > index and n for k, n in run.taken):
                    new = True  # a later store was seen: this one is complete
                run.taken.append((index, new))
                store = case.stores[index]
                want = store.new if new else store.old
                if run.current.get(address) != want:
                    # The instruction was already translated from the other
                    # version: write the chosen one and restart at this fetch.
                    uc.mem_write(address, arm64.word_bytes(want))
                    uc.ctl_remove_cache(address, address + 4)
                    run.current[address] = want
                    run.pending = (address, new)
                    run.resume = address
                    uc.emu_stop()
                    return
            version = "new" if new else "old"
        if run.steps is not None:
            raw = bytes(uc.mem_read(address, 4))
            word = arm64.read_word(raw, 0)
            run.steps.append(
                Step(
                    address,
                    word,
                    index,
                    version,
                    self._disassemble(word, address),
                    uc.reg_read(self._x9),
                    uc.reg_read(self._x30),
                    uc.reg_read(self._sp),
                )
            )

    def _disassemble(self, word: int, address: int) -> str:
        if arm64.is_bl(word) or arm64.is_b(word):
            return arm64.disassemble(word, address)
        if self._cs is None:
            import capstone

            self._cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
        for insn in self._cs.disasm(arm64.word_bytes(word), address):
            return f"{insn.mnemonic} {insn.op_str}".strip()
        return ".inst (undefined)"

    def _reset(self, case: Case, caller: int, preset: dict[int, int] | None = None) -> None:
        """Registers and log as at the start; each changed word as ``preset`` says (or old).

        Presetting the version of a word's first fetch, known from the run
        that discovered the choice, saves a stop and restart in the hook.
        """
        uc = self._uc
        for s in case.stores:
            want = s.old if preset is None else preset.get(s.address, s.old)
            if self._memory.get(s.address) != want:
                uc.mem_write(s.address, arm64.word_bytes(want))
                uc.ctl_remove_cache(s.address, s.address + 4)
                self._memory[s.address] = want
        uc.mem_write(LOG_BASE, bytes(8))
        uc.context_restore(self._initial)

    def _initial_context(self) -> Any:
        """Registers at the caller stub: sentinels, garbage X9, the stub's own LR."""
        uc = self._uc
        for i, reg in enumerate(self._xregs):
            uc.reg_write(reg, _sentinel(i))
        uc.reg_write(self._x9, GARBAGE_X9)
        uc.reg_write(self._x29, _sentinel(29))
        uc.reg_write(self._x30, CALLER_LR)
        uc.reg_write(self._sp, STACK_POINTER)
        return uc.context_save()

    def _execute(self, case: Case, caller: int, run: _Run) -> tuple[int, str | None]:
        """Run from the caller stub to the body; (pc, fault or None)."""
        from unicorn.unicorn import UcError

        uc = self._uc
        self._run = run
        run.current = self._memory
        pc = caller
        budget = len(case.stores) * 4 + 8  # restarts: one per changed-word fetch at most
        fault: str | None = None
        while True:
            run.resume = None
            try:
                uc.emu_start(pc, case.body, count=self.max_steps)
            except UcError as exc:
                fault = str(exc)
            pc = uc.reg_read(self._pc)
            if run.resume is None or fault is not None or budget == 0:
                break
            budget -= 1
            pc = run.resume
        self.runs += 1
        return pc, fault

    def _judge(self, case: Case, caller: int, pc: int, fault: str | None) -> list[str]:
        uc = self._uc
        ret = caller + 4
        problems: list[str] = []
        if fault is not None:
            problems.append(f"execution faulted at {pc:#x}: {fault}")
        elif pc != case.body:
            problems.append(
                f"did not reach the first body instruction {case.body:#x} "
                f"(stopped at {pc:#x} after at most {self.max_steps} instructions)"
            )
        else:
            x30 = uc.reg_read(self._x30)
            if x30 != ret:
                problems.append(
                    f"x30 = {x30:#x} at the first body instruction, not the caller's return "
                    f"address {ret:#x}: the function would return to {x30:#x}"
                )
            sp, *saved = uc.reg_read_batch([self._sp, *self._checked])
            if sp != STACK_POINTER:
                problems.append(f"sp = {sp:#x}, was {STACK_POINTER:#x}")
            for i, value in zip((*_CALLEE_SAVED, 29), saved, strict=True):
                if value != _sentinel(i):
                    problems.append(f"callee-saved x{i} = {value:#x}, was {_sentinel(i):#x}")
        log = self._log()
        if len(log) > 1:
            problems.append(f"the trampoline ran {len(log)} times")
        for x9, _x30, _tramp in log[:1]:
            if x9 != ret:
                problems.append(
                    f"the trampoline saw x9 = {x9:#x}, not the caller's return address {ret:#x}"
                )
        return problems

    def _log(self) -> tuple[tuple[int, int, int], ...]:
        count = min(int.from_bytes(self._uc.mem_read(LOG_BASE, 8), "little"), MAX_LOG_ENTRIES)
        if count == 0:
            return ()
        raw = bytes(self._uc.mem_read(LOG_BASE, LOG_ENTRY * (count + 1)))
        out = []
        for n in range(1, count + 1):
            o = n * LOG_ENTRY
            out.append(
                tuple(int.from_bytes(raw[o + 8 * k : o + 8 * k + 8], "little") for k in range(3))
            )
        return tuple((e[0], e[1], e[2]) for e in out)

    def run_one(self, case: Case, fetches: Sequence[bool]) -> Counterexample:
        """Re-run one interleaving with a full trace (violations may be empty)."""
        from unicorn import UC_HOOK_CODE

        self._case = case
        self._stores_at = {s.address: i for i, s in enumerate(case.stores)}
        caller = self.caller_for(case)
        self._load(case, caller)
        run = _Run(tuple(fetches), steps=[])
        handle = self._uc.hook_add(UC_HOOK_CODE, self._hook, None, 1, 0)
        try:
            self._reset(case, caller)
            pc, fault = self._execute(case, caller, run)
            problems = self._judge(case, caller, pc, fault)
        finally:
            self._uc.hook_del(handle)
        assert run.steps is not None
        return Counterexample(
            case,
            caller,
            Interleaving(tuple(run.taken)),
            tuple(problems),
            tuple(run.steps),
            pc,
            self._uc.reg_read(self._x30),
            self._log(),
        )

    def explore(
        self, case: Case, *, trace: bool = True, origin: tuple[str, int] | None = None
    ) -> Exploration:
        """Every interleaving of ``case``: each changed-word fetch old or new.

        With ``trace`` the first violating interleavings are re-run with a
        per-instruction trace (``Exploration.counterexamples``), always on
        ``case`` itself, at its own addresses.  A case whose recorded bytes
        match an earlier emulation's takes its result (``emulation.reused``).
        """
        self.cases += 1
        keep = self.max_counterexamples if trace else 0
        shape = self._share_key(case)
        if shape is not None:
            key, words = shape
            hit = self._lookup(key, words)
            if hit is not None:
                examples = tuple(self.run_one(case, f) for f in hit.schedules[:keep])
                if all(x.violations for x in examples):
                    self.reused += 1
                    return Exploration(
                        case,
                        hit.interleavings,
                        hit.failing,
                        examples,
                        hit.truncated,
                        hit.fetched_changed,
                        hit.emulation,
                    )
                self.retrace_mismatches += 1  # never seen; run it as if new
        self.emulations += 1
        emulation = Emulation(self.emulations, origin)
        count, failing, truncated, fetched_changed, caller = self._explore_all(
            case, record=shape is not None
        )
        if shape is not None and self._shared_count < MAX_SHARED:
            indexes = self._shareable(case, caller)
            if indexes is not None:
                key, words = shape
                self._keep(
                    key,
                    words,
                    indexes,
                    _Shared(
                        Emulation(emulation.id, origin, True),
                        count,
                        len(failing),
                        tuple(failing[: self.max_counterexamples]),
                        truncated,
                        fetched_changed,
                    ),
                )
        examples = tuple(self.run_one(case, f) for f in failing[:keep])
        return Exploration(
            case, count, len(failing), examples, truncated, fetched_changed, emulation
        )

    # -- sharing -------------------------------------------------------------

    def _share_key(self, case: Case) -> tuple[_Key, tuple[int, ...]] | None:
        """The key and the words to compare, or None when the case may not share.

        Its own layout must mean what the key says: trampolines intact (not
        overlapping the entry words or the stores) and nothing where the
        emulator keeps its data (that case fails loudly when it runs).
        This runs once per case, shared or not: it is kept lean.
        """
        start = case.start
        words = case.words
        end = start + 4 * len(words) + 4  # the body word is mapped too
        tramps = case.trampolines
        span = self._tramp_span
        stores = case.stores
        if (end > STACK_BASE and start < _DATA_END) or start >> 32 in _MAGIC_WINDOWS:
            return None
        for t in tramps:
            if (t < end and start < t + span) or (t + span > STACK_BASE and t < _DATA_END):
                return None
            if t >> 32 in _MAGIC_WINDOWS:
                return None
            for st in stores:
                if t < st.address + 4 and st.address < t + span:
                    return None
        tokens: list[int] | None = None
        for i, w in enumerate(words):
            if w & 0xFC000000 == 0x94000000:  # bl: a call to a trampoline is named by index
                target = _bl_target(start + 4 * i, w)
                if target in tramps:
                    if tokens is None:
                        tokens = list(words)
                    tokens[i] = -1 - tramps.index(target)
        if tokens is not None:
            words = tuple(tokens)
        relative = []
        for st in stores:
            a = st.address
            if a + 4 > STACK_BASE and a < _DATA_END:
                return None
            old, new = st.old, st.new
            if old & 0xFC000000 == 0x94000000 and _bl_target(a, old) in tramps:
                old = -1 - tramps.index(_bl_target(a, old))
            if new & 0xFC000000 == 0x94000000 and _bl_target(a, new) in tramps:
                new = -1 - tramps.index(_bl_target(a, new))
            relative.append((a - start, old, new))
        key: _Key = (
            len(words),
            case.entry - start,
            tuple(relative),
            case.ordered,
            len(tramps),
            self.max_steps,
            self.max_interleavings,
            self.max_counterexamples,
        )
        return key, words

    def _lookup(self, key: _Key, words: tuple[int, ...]) -> _Shared | None:
        for pick, table in self._shared.get(key, ()):
            hit = table.get(pick(words))
            if hit is not None:
                return hit
        return None

    def _keep(
        self, key: _Key, words: tuple[int, ...], indexes: tuple[int, ...], result: _Shared
    ) -> None:
        tables = self._shared.setdefault(key, [])
        found = next(((p, t) for p, t in tables if p.indexes == indexes), None)
        if found is None:
            found = (_Picker(indexes), {})
            tables.append(found)
        pick, table = found
        table[pick(words)] = result
        self._shared_count += 1

    def _shareable(self, case: Case, caller: int) -> tuple[int, ...] | None:
        """The entry words the runs fetched or read, or None when the result
        depends on something the key does not hold: a word that is not
        ``placement_free``, a branch leaving the entry words other than to a
        trampoline, a fetch or read of anything but the entry words, the
        stores, the trampolines, the caller stub and the emulator's data."""
        start, body = case.start, case.body
        tramps = case.trampolines
        span = len(self._tramp_bytes)
        stores = {s.address: s for s in case.stores}

        def free(word: int, address: int, low: int, high: int, *, calls: bool = True) -> bool:
            """Placement-free, its branch landing in [low, high] or, with
            ``calls``, a BL to a trampoline (the key names which)."""
            if not placement_free(word):
                return False
            if word & arm64.BRANCH_MASK in (arm64.B_OPCODE, arm64.BL_OPCODE):
                target = arm64.bl_target(address, word)  # same imm26 for B
                if calls and word & arm64.BRANCH_MASK == arm64.BL_OPCODE and target in tramps:
                    return True
                return low <= target <= high
            return True

        indexes: set[int] = set()
        for address in self._fetched:
            if address == caller:
                continue  # the stub's BL entry: the key holds the entry
            tramp = next((t for t in tramps if t <= address < t + span), None)
            if tramp is not None:
                offset = address - tramp
                # Its words are the same everywhere, so a BL in it reaches the
                # other trampoline only as far as this layout puts it: stay inside.
                if not self._tramp_trusted and (
                    offset % 4
                    or not free(
                        self._tramp[offset // 4], address, tramp, tramp + span - 4, calls=False
                    )
                ):
                    return None
                continue
            if address % 4:
                return None
            store = stores.get(address)
            if store is not None:
                if not (
                    free(store.old, address, start, body) and free(store.new, address, start, body)
                ):
                    return None
            elif not start <= address < body:
                return None
            elif not free(case.words[(address - start) // 4], address, start, body):
                return None
            if start <= address < body:
                indexes.add((address - start) // 4)
        for address, size in self._reads:
            if LOG_BASE <= address and address + size <= LOG_BASE + 8:
                continue  # the log's count, which every run starts at zero
            if not (start <= address and address + size <= body):
                return None
            # No placement_free word loads, so today this is not reached;
            # were one allowed, the words it read would count like fetched ones.
            indexes.update(range((address - start) // 4, (address + size - 1 - start) // 4 + 1))
        return tuple(sorted(indexes))

    def _record_fetch(self, _uc: Any, address: int, _size: int, _data: Any) -> None:
        self._fetched.add(address)

    def _record_read(
        self, _uc: Any, _access: int, address: int, size: int, _value: int, _data: Any
    ) -> None:
        self._reads.append((address, size))

    def _explore_all(
        self, case: Case, *, record: bool
    ) -> tuple[int, list[tuple[bool, ...]], bool, bool, int]:
        """Run every interleaving; with ``record``, note what the runs fetched
        and read (``_fetched``, ``_reads``, and where each run stopped)."""
        from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ

        self._case = case
        self._stores_at = {s.address: i for i, s in enumerate(case.stores)}
        caller = self.caller_for(case)
        self._load(case, caller)
        failing: list[tuple[bool, ...]] = []
        count = 0
        truncated = False
        fetched_changed = False
        handles = []
        if case.stores:
            lo = min(s.address for s in case.stores)
            hi = max(s.address for s in case.stores) + 3
            handles.append(self._uc.hook_add(UC_HOOK_CODE, self._hook, None, lo, hi))
        self._fetched = set()
        self._reads = []
        if record:
            handles.append(self._uc.hook_add(UC_HOOK_CODE, self._record_fetch, None, 1, 0))
            handles.append(self._uc.hook_add(UC_HOOK_MEM_READ, self._record_read, None, 1, 0))
        try:
            # (schedule, store index of each scheduled fetch, as the run that
            # found the choice saw them)
            pending: list[tuple[tuple[bool, ...], tuple[int, ...]]] = [((), ())]
            while pending:
                if count >= self.max_interleavings:
                    truncated = True
                    break
                schedule, order = pending.pop()
                preset: dict[int, int] = {}
                for new, i in zip(schedule, order, strict=True):
                    s = case.stores[i]
                    preset.setdefault(s.address, s.new if new else s.old)
                run = _Run(schedule)
                self._reset(case, caller, preset)
                pc, fault = self._execute(case, caller, run)
                if pc != case.body:
                    self._fetched.add(pc)  # where it faulted or ran out of steps
                count += 1
                taken = tuple(new for _i, new in run.taken)
                fetched = tuple(i for i, _new in run.taken)
                fetched_changed = fetched_changed or bool(fetched)
                if self._judge(case, caller, pc, fault):
                    failing.append(taken)
                for d in range(len(taken) - 1, len(schedule) - 1, -1):
                    if not taken[d]:
                        pending.append(((*taken[:d], True), fetched[: d + 1]))
        finally:
            for handle in handles:
                self._uc.hook_del(handle)
        return count, failing, truncated, fetched_changed, caller
