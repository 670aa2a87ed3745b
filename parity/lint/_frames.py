"""Activation records of the interpreter: frames, running loops, calls, classes."""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import NamedTuple

from parity.lint._state import ModeFact, ModeState, Value
from parity.lint._syntax import FunctionNode, last_name


class FuncRef(NamedTuple):
    """A callable definition: its node, the frame it was defined in, and its class (methods)."""

    node: FunctionNode
    frame: Frame
    cls: str | None


class Argument(NamedTuple):
    """An argument at a call site: its abstract value and its expression (None for ``self``)."""

    value: Value
    expr: ast.expr | None


class BoundCallable(NamedTuple):
    """A function value known at a call site: a function, a bound method, or a ``partial`` of
    either, with the receiver and the arguments it was bound with."""

    ref: FuncRef
    self_val: str | None = None
    positional: tuple[Argument, ...] = ()
    keywords: tuple[tuple[str, Argument], ...] = ()


class SavedFlag(NamedTuple):
    """``was_training = model.training``: whose mode the name holds, and the facts at the save."""

    oid: str
    facts: frozenset[ModeFact]


class Frame:
    """One activation: the module body, or an inlined function call."""

    __slots__ = (
        "callables",
        "cls",
        "consts",
        "env",
        "file",
        "finally_stack",
        "flags",
        "funcs",
        "globals",
        "locals",
        "loops",
        "name",
        "node",
        "nonlocals",
        "param_consts",
        "parent",
        "returns",
        "self_val",
        "tag",
    )

    def __init__(self, node: ast.AST, parent: Frame | None, name: str, cls: str | None = None) -> None:
        """A frame for ``node`` whose free names are looked up in ``parent``."""
        self.node = node
        self.parent = parent
        self.name = name
        self.cls = cls
        self.file = parent.file if parent is not None else ""  # the source file of this code
        self.tag = parent.tag if parent is not None else ""  # prefix of object ids made here
        self.self_val: str | None = None
        self.env: dict[str, Value] = {}
        self.consts: dict[str, object] = {}  # names bound to a known bool/str/int constant
        self.param_consts: dict[str, object] = {}  # parameters fixed by the call site, not rebound
        self.funcs: dict[str, FuncRef] = {}
        self.callables: dict[str, BoundCallable] = {}  # names bound to a known function value
        self.flags: dict[str, SavedFlag] = {}  # local names that hold a saved ``model.training``
        self.locals: set[str] = set()
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()
        self.returns: list[tuple[ModeState, Value]] = []
        self.loops: list[LoopRun] = []
        self.finally_stack: list[Callable[[ModeState], ModeState | None]] = []


#: the chain of calls from a loop into the helper that ran an eval: (line of the call, label)
CallChain = tuple[tuple[int, str, str], ...]  # (line, label, file) per call


class LoopRun:
    """A running loop: where it is, and which eval sites ran inside it (with the call chain)."""

    def __init__(self, line: int, depth: int, finally_depth: int, trains: bool) -> None:
        self.line = line
        self.depth = depth
        self.finally_depth = finally_depth
        self.trains = trains  # the loop body contains a training step (backward / optimizer step)
        self.file = ""  # the file the loop is written in
        self.seen: dict[tuple[str, int, int], CallChain] = {}
        #: eval site in another file -> the outermost call in the linted file that led to it
        self.anchors: dict[tuple[str, int, int], tuple[int, int]] = {}
        self.breaks: list[ModeState] = []
        self.continues: list[ModeState] = []


class CallRecord(NamedTuple):
    """One inlined call on the interpreter's stack."""

    node: ast.AST
    line: int
    label: str
    file: str = ""  # the file of the call (the caller's)
    col: int = 0


class ClassInfo:
    """A class defined in the analysed code: its bases (last names) and its methods."""

    def __init__(self, node: ast.ClassDef, module: str = "") -> None:
        self.node = node
        self.module = module
        self.bases = [last_name(base) for base in node.bases]
        self.methods: dict[str, FunctionNode] = {
            stmt.name: stmt for stmt in node.body if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
