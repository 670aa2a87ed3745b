"""The abstract state: which modes each object may be in, and the facts that feed the rules.

Objects are identified by strings: an allocation site (``new@12:4``), a parameter
(``param@3:model``), a global (``global:model``) or an attribute path (``self@Trainer.model``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

Value = str | tuple | None  # an object id, a tuple of values, or nothing known


class ModeFact(NamedTuple):
    """One mode an object may be in: ``default``, ``train``, ``unknown`` or ``eval`` at a site."""

    kind: str
    line: int = 0  # the eval call site (1-based line, 0-based column); 0 for the other kinds
    col: int = 0
    file: str = ""  # the file of the eval call ("" for the other kinds)

    @property
    def is_eval(self) -> bool:
        """Whether this is an ``eval()`` / ``train(False)`` fact."""
        return self.kind == "eval"

    @property
    def site(self) -> tuple[str, int, int]:
        """(file, line, col) of the eval call."""
        return (self.file, self.line, self.col)


DEFAULT_MODES: frozenset[ModeFact] = frozenset({ModeFact("default")})
TRAIN = ModeFact("train")
UNKNOWN = ModeFact("unknown")


def eval_fact(line: int, col: int, file: str) -> ModeFact:
    """The fact set by an eval call at (line, col) of ``file``."""
    return ModeFact("eval", line, col, file)


def only_evals(facts: Iterable[ModeFact]) -> frozenset[ModeFact]:
    """The eval facts among ``facts``."""
    return frozenset(fact for fact in facts if fact.is_eval)


class PendingForward(NamedTuple):
    """A forward pass since the last training step that may have run in eval mode."""

    line: int
    text: str  # the callee's source, e.g. ``self.model``
    evals: frozenset[ModeFact]  # the eval facts the object had at the forward pass
    file: str = ""  # the file of the forward call


class LoadSite(NamedTuple):
    """Where an object's weights were read from a file (for MODE002)."""

    line: int
    how: str  # ``load_state_dict()`` or ``torch.load()``


class ModeState:
    """Mode facts per object, forward calls since the last step, and models loaded from files."""

    __slots__ = ("loaded", "modes", "pending")

    def __init__(
        self,
        modes: dict[str, frozenset[ModeFact]] | None = None,
        pending: dict[str, PendingForward] | None = None,
        loaded: dict[str, LoadSite] | None = None,
    ) -> None:
        self.modes = modes if modes is not None else {}
        self.pending = pending if pending is not None else {}
        self.loaded = loaded if loaded is not None else {}

    def copy(self) -> ModeState:
        """An independent copy (the dicts are copied, the facts are immutable)."""
        return ModeState(dict(self.modes), dict(self.pending), dict(self.loaded))

    def replace(self, other: ModeState) -> None:
        """Take over ``other``'s contents (used when an inlined call returns)."""
        self.modes, self.pending, self.loaded = dict(other.modes), dict(other.pending), dict(other.loaded)

    def mode(self, oid: str) -> frozenset[ModeFact]:
        """Facts for ``oid``; a sub-module without its own facts follows its parent."""
        key = oid
        while True:
            facts = self.modes.get(key)
            if facts is not None:
                return facts
            cut = key.rfind(".")
            if cut <= 0:
                return DEFAULT_MODES
            key = key[:cut]

    def set_mode(self, oid: str, facts: frozenset[ModeFact]) -> None:
        """``train()``/``eval()`` are recursive: sub-modules lose their own facts."""
        prefix = oid + "."
        for key in [k for k in self.modes if k.startswith(prefix)]:
            del self.modes[key]
        self.modes[oid] = facts

    def forget(self, oid: str) -> None:
        """A new object at an allocation site: drop what the previous one there was doing."""
        if oid in self.modes or oid in self.pending or oid in self.loaded:
            self.set_mode(oid, DEFAULT_MODES)
            self.pending.pop(oid, None)
            self.loaded.pop(oid, None)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ModeState)
            and self.modes == other.modes
            and self.pending == other.pending
            and self.loaded == other.loaded
        )

    __hash__ = None  # type: ignore[assignment]


def _join_pending(live: list[ModeState]) -> dict[str, PendingForward]:
    pending: dict[str, PendingForward] = {}
    for state in live:
        for oid, new in state.pending.items():
            old = pending.get(oid)
            if old is None:
                pending[oid] = new
            else:
                line, text = min((new.line, new.text), (old.line, old.text))
                file = new.file if (new.line, new.text) <= (old.line, old.text) else old.file
                pending[oid] = PendingForward(line, text, old.evals | new.evals, file)
    return pending


def join_states(states: Iterable[ModeState | None]) -> ModeState | None:
    """Union of the states that can be reached (None = unreachable)."""
    live = [state for state in states if state is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0].copy()
    keys: set[str] = set()
    for state in live:
        keys.update(state.modes)
    modes = {key: frozenset().union(*(state.mode(key) for state in live)) for key in keys}
    loaded: dict[str, LoadSite] = {}
    for state in live:
        for oid, site in state.loaded.items():
            if oid not in loaded or site < loaded[oid]:
                loaded[oid] = site
    return ModeState(modes, _join_pending(live), loaded)
