"""The verifier's plain data: what the static pass hands the engine and what
the engine hands back (stores, cases, explorations, counterexamples).

Nothing here imports the engine (unicorn) or reads ELF: findings.py,
render.py and the static checks use these types without loading either.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Store:
    """One word the runtime patcher writes: ``old`` -> ``new`` at ``address``."""

    address: int
    old: int
    new: int


@dataclass(frozen=True, slots=True)
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
    # The patcher stores in the order of ``stores`` and completes each
    # store's cache maintenance (DC CVAU, DSB ISH, IC IVAU, DSB ISH, as the
    # kernel's aarch64_insn_patch_text_nosync does per word) before the next.
    # Then a fetch that saw store k's new word orders every later fetch of
    # an earlier store's word after that store: it sees the new word too.
    # Without it, each fetch of a changed word may see old or new (the
    # superset herd7's ifetch model allows with no maintenance at all).
    ordered: bool = False

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


@dataclass(frozen=True, slots=True)
class Emulation:
    """The emulation that covered a case: which run, and whose case ran it.

    ``origin`` is what the caller of ``explore`` passed for the case that
    ran it (``verify_file`` passes the file and the site index); ``reused``
    says this case took that result instead of running.
    """

    id: int  # per engine, in the order emulations ran
    origin: tuple[str, int] | None
    reused: bool = False


@dataclass(frozen=True, slots=True)
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
    emulation: Emulation | None = None

    @property
    def ok(self) -> bool:
        return self.failing == 0 and not self.truncated
