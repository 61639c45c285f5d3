"""Emulated proof of concurrent patching of one function entry, with unicorn.

The engine knows nothing about ELF.  Its input (:class:`Case`) is the words of
a function entry at their addresses, the stores a runtime patcher makes to
them (old -> new, in the patcher's order) and the addresses of the
trampolines the BL words call.  A caller stub does ``BL entry``; each
trampoline honours the kernel's ``ftrace_caller`` contract (entry-ftrace.S):
it logs (X9, X30), restores X30 from X9 and returns to the old X30.

Model (ARM DDI 0487 B2.2.5 and the herd7 ``-variant ifetch`` results in
ARM64-FTRACE.md): the patcher's stores take effect between the executing
CPU's instruction fetches, and with no synchronisation between fetches of
different words each fetch of a changed word may see its old or its new
value.  The engine explores every such choice, depth first, re-running the
entry from the caller stub for each one, and checks at the first body
instruction that X30 is the caller's return address, that SP and X19-X29 are
unchanged, and that a trampoline ran at most once and saw X9 = the caller's
return address.  A violating interleaving is re-run with a per-instruction
trace so that it can be printed step by step.

unicorn, keystone and capstone are imported inside the functions that use
them: nothing on the rewrite path imports this module's dependencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ftpatch import arm64

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


@dataclass(frozen=True)
class Store:
    """One word the runtime patcher writes: ``old`` -> ``new`` at ``address``."""

    address: int
    old: int
    new: int


@dataclass(frozen=True)
class Case:
    """One transition of one function entry, as the engine sees it.

    ``words`` is memory from ``start`` up to ``body`` (the first body
    instruction, where the checks are made); it holds the words as they are
    when no store has happened, so a store's ``old`` and the word at its
    address agree.  ``entry`` is where the caller's BL lands (the function
    symbol), ``trampolines`` where the BL words of the stores lead.
    """

    start: int
    words: tuple[int, ...]
    entry: int
    stores: tuple[Store, ...]
    trampolines: tuple[int, ...]
    name: str = ""  # transition name, for the report: enable, disable, retarget

    @property
    def body(self) -> int:
        return self.start + 4 * len(self.words)


@dataclass(frozen=True)
class Step:
    """One executed instruction: registers as they were before it ran."""

    address: int
    word: int
    store: int | None  # index into Case.stores when this word is a changed one
    version: str | None  # "old" or "new" for a changed word, else None
    text: str  # disassembly
    x9: int
    x30: int
    sp: int


@dataclass(frozen=True)
class Interleaving:
    """What each fetch of a changed word saw, in fetch order: (store index, new?)."""

    fetches: tuple[tuple[int, bool], ...]

    def describe(self, case: Case) -> str:
        if not self.fetches:
            return "no changed word fetched"
        return ", ".join(
            f"{case.stores[i].address:#x} {'new' if new else 'old'}" for i, new in self.fetches
        )


@dataclass(frozen=True)
class Counterexample:
    """A violating interleaving, with its trace and the state at the end."""

    case: Case
    caller: int  # address of the caller stub's BL
    interleaving: Interleaving
    violations: tuple[str, ...]
    steps: tuple[Step, ...]
    end_pc: int
    end_x30: int
    log: tuple[tuple[int, int, int], ...]  # (x9, x30, trampoline) per trampoline run

    @property
    def return_address(self) -> int:
        return self.caller + 4


@dataclass(frozen=True)
class Exploration:
    """Result of exploring every interleaving of one Case."""

    case: Case
    interleavings: int
    failing: int
    counterexamples: tuple[Counterexample, ...] = field(default=())  # at most a few
    truncated: bool = False
    # Whether any run fetched a word the patcher changes: one that never did
    # ran only unchanged code and proves nothing about the transition.
    fetched_changed: bool = True

    @property
    def ok(self) -> bool:
        return self.failing == 0 and not self.truncated


@dataclass
class _Run:
    schedule: tuple[bool, ...]
    taken: list[tuple[int, bool]] = field(default_factory=list)
    current: dict[int, int] = field(default_factory=dict)  # address -> word in memory
    pending: tuple[int, bool] | None = None  # (address, new?) of a fetch being restarted
    resume: int | None = None
    steps: list[Step] | None = None


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
        self._tramp = assemble(trampoline_source(trampoline))
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
        self.cases = 0
        self.runs = 0

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

    def explore(self, case: Case, *, trace: bool = True) -> Exploration:
        """Every interleaving of ``case``: each changed-word fetch old or new.

        With ``trace`` the first violating interleavings are re-run with a
        per-instruction trace (``Exploration.counterexamples``).
        """
        from unicorn import UC_HOOK_CODE

        self.cases += 1
        self._case = case
        self._stores_at = {s.address: i for i, s in enumerate(case.stores)}
        caller = self.caller_for(case)
        self._load(case, caller)
        failing: list[tuple[bool, ...]] = []
        count = 0
        truncated = False
        fetched_changed = False
        handle = None
        if case.stores:
            lo = min(s.address for s in case.stores)
            hi = max(s.address for s in case.stores) + 3
            handle = self._uc.hook_add(UC_HOOK_CODE, self._hook, None, lo, hi)
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
            if handle is not None:
                self._uc.hook_del(handle)
        keep = self.max_counterexamples if trace else 0
        examples = tuple(self.run_one(case, f) for f in failing[:keep])
        return Exploration(case, count, len(failing), examples, truncated, fetched_changed)
