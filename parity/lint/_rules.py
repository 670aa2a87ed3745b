"""The rules: mode changes and forward passes feed MODE001/MODE002; MODE003 is a syntactic scan."""

from __future__ import annotations

import ast
import collections
from collections.abc import Iterator

from parity.lint._findings import Finding, FixHint
from parity.lint._frames import Frame, LoopRun
from parity.lint._state import TRAIN, UNKNOWN, ModeFact, ModeState, PendingForward, eval_fact, only_evals
from parity.lint._syntax import dotted_name, keyword_value, source_text

TRAIN_FACTS = frozenset({TRAIN})


class RuleMixin:
    """Records eval sites, forward passes and training steps; turns them into findings."""

    path: str
    loops: list[LoopRun]
    stack: list
    no_grad: int
    has_training: bool
    sites: dict[tuple[str, int, int], tuple[str, str]]
    candidates: dict[tuple, tuple[Finding, str]]
    trained: set[str]
    train_sites: dict[str, tuple[str, int]]
    touches: int
    train_facts = TRAIN_FACTS

    def _mode_facts(self, meth: str, node: ast.Call, frame: Frame, oid: str) -> frozenset[ModeFact]:
        """The facts ``oid.train(...)`` / ``oid.eval()`` leaves (``train(flag)`` restores a saved flag)."""
        if meth == "eval":
            return frozenset({eval_fact(node.lineno, node.col_offset, frame.file)})
        arg = node.args[0] if node.args else keyword_value(node, "mode")
        if arg is None:
            return TRAIN_FACTS
        const = self._const_bool(arg, frame)
        if const is True:
            return TRAIN_FACTS
        if const is False:
            return frozenset({eval_fact(node.lineno, node.col_offset, frame.file)})
        if isinstance(arg, ast.Name) and arg.id in frame.flags and frame.flags[arg.id].oid == oid:
            return frame.flags[arg.id].facts  # train(was_training): back to the saved mode
        return frozenset({UNKNOWN})  # train(expr): a restore we cannot evaluate

    def _set_mode(
        self, oid: str, facts: frozenset[ModeFact], node: ast.Call, frame: Frame, state: ModeState
    ) -> None:
        """Apply a mode call; a new eval site is remembered in every loop that is running."""
        self.touches += 1
        new_evals = [
            fact for fact in facts if fact.is_eval and fact.site == (frame.file, node.lineno, node.col_offset)
        ]
        if len(facts) == 1 and new_evals:
            site = new_evals[0].site
            self.sites.setdefault(site, (source_text(node), frame.name))
            for loop in self.loops:
                anchor = self._anchor(loop)
                chain = tuple((call.line, call.label, call.file) for call in self.stack[loop.depth :])
                loop.seen.setdefault(site, chain)
                if anchor is not None:
                    loop.anchors.setdefault(site, anchor)
            # An eval does not undo an earlier eval: both still need a train() afterwards.
            state.set_mode(oid, only_evals(state.mode(oid)) | facts)
            return
        if facts == TRAIN_FACTS:
            self.train_sites[oid] = (frame.file, node.lineno)
        state.set_mode(oid, facts)

    def _anchor(self, loop: LoopRun) -> tuple[int, int] | None:
        """Where to report an eval in another file: the first call inside ``loop`` that is in the
        linted file, else the last call in the linted file that leads into the loop's function."""
        inside = [call for call in self.stack[loop.depth :] if call.file == self.path]
        outside = [call for call in self.stack[: loop.depth] if call.file == self.path]
        call = inside[0] if inside else (outside[-1] if outside else None)
        return None if call is None else (call.line, call.col)

    def _forward(self, oid: str, node: ast.Call, callee: ast.AST, state: ModeState, direct: bool) -> None:
        """A forward pass of ``oid`` (with gradients enabled it is checked at the next step)."""
        if not self.no_grad:
            evals = only_evals(state.mode(oid))
            if evals:  # only a forward pass that may run in eval mode matters
                old = state.pending.get(oid)
                if old is None:
                    state.pending[oid] = PendingForward(
                        node.lineno, source_text(callee), evals, self.current.file
                    )
                else:  # name the latest forward pass: the training step's, not the eval routine's
                    state.pending[oid] = PendingForward(
                        node.lineno, source_text(callee), old.evals | evals, self.current.file
                    )
        in_this_file = self.current.file == self.path
        if (
            direct
            and in_this_file
            and oid in state.loaded
            and state.mode(oid) == _DEFAULT_ONLY
            and not self.has_training  # last: one walk of the whole tree
        ):
            line, how = state.loaded[oid]
            name = source_text(callee)
            self._add(
                ("MODE002", oid),
                oid,
                node,
                "MODE002",
                f"`{name}` runs inference after {how} (line {line}) without `{name}.eval()`; "
                "Dropout and BatchNorm stay in training mode",
            )

    def _step(self, state: ModeState, step: ast.Call) -> None:
        """A training step: every pending forward that is still in a loop-run eval mode is MODE001."""
        self.steps_seen += 1  # training through helpers in other files: no MODE002 here either
        self.touches += 1
        for oid, forward in sorted(state.pending.items()):
            # Eval at the forward pass and still not undone at the step (a forward pass in a
            # validation loop without no_grad(), followed by train(), is not a finding).
            for fact in sorted(forward.evals & state.mode(oid)):
                loop = next((run for run in reversed(self.loops) if fact.site in run.seen), None)
                if loop is not None:
                    self._report_leak(oid, forward, fact, loop, step)
        state.pending.clear()

    def _at(self, file: str, line: int) -> str:
        """``line N`` in the linted file, ``path:N`` in another file of the project."""
        return f"line {line}" if file == self.path else f"{file}:{line}"

    def _leak_message(
        self, oid: str, forward: PendingForward, fact: ModeFact, loop: LoopRun, step: ast.Call
    ) -> str:
        """Name the eval site, the chain of calls from the loop to it, and the training step."""
        text, func = self.sites[fact.site]
        where = f" in {func}()" if func != "<module>" else ""
        chain = loop.seen[fact.site]
        via = ""
        if chain:
            via = ", reached via " + " -> ".join(
                f"{label} at {self._at(file, line)}" for line, label, file in chain
            )
        step_at = self._at(self.current.file, step.lineno)
        outer = self.stack[loop.depth :]
        if outer:  # the step is inside a helper called from the loop
            step_at += " in " + " -> ".join(
                f"{call.label} at {self._at(call.file, call.line)}" for call in outer
            )
        last_train = self.train_sites.get(oid)
        trained_at = (
            f"last set to train at {self._at(*last_train)}" if last_train else "never set to train before it"
        )
        return (
            f"`{forward.text}` is left in eval mode inside the training loop at {self._at(loop.file, loop.line)}: "
            f"`{text}` at {fact.file}:{fact.line}{where}{via} is not undone by "
            f"`{forward.text}.train()` before the training step at {step_at} "
            f"(forward pass at {self._at(forward.file, forward.line)}; {trained_at})"
        )

    def _report_leak(
        self, oid: str, forward: PendingForward, fact: ModeFact, loop: LoopRun, step: ast.Call
    ) -> None:
        """Add the MODE001 finding at the eval site, or, when that is in another file, at the
        outermost call in the linted file that leads to it."""
        location: ModeFact | None = fact
        if fact.file != self.path:
            anchor = loop.anchors.get(fact.site)
            location = None if anchor is None else ModeFact("eval", anchor[0], anchor[1], self.path)
        if location is not None:
            message = self._leak_message(oid, forward, fact, loop, step)
            hint = None
            if loop.file == self.path and forward.file == self.path and forward.line >= loop.line:
                hint = FixHint(loop.line, forward.text, forward.line)
            self._add(("MODE001", fact.site), oid, location, "MODE001", message, hint)

    def _add(
        self,
        key: tuple,
        oid: str,
        where: ast.AST | ModeFact,
        code: str,
        message: str,
        hint: FixHint | None = None,
    ) -> None:
        if key not in self.candidates:
            if isinstance(where, ModeFact):
                path, line, col = where.site
            else:
                path, line, col = self.path, where.lineno, where.col_offset
            self.touches += 1
            self.candidates[key] = (Finding(path, line, col + 1, code, message, hint), oid)


_DEFAULT_ONLY = frozenset({ModeFact("default")})

# --------------------------------------------------------------------------- MODE003

#: functional dropouts whose third parameter is ``training`` (default True)
_DROPOUTS = frozenset(
    {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"}
)
_BATCH_NORM_TRAINING_INDEX = 5  # F.batch_norm(input, mean, var, weight, bias, training, ...)


def _functional_aliases(tree: ast.Module) -> tuple[set[str], dict[str, str]]:
    """(names bound to ``torch.nn.functional``, local name -> function of it imported by name)."""
    modules = {"torch.nn.functional", "nn.functional"}
    functions: dict[str, str] = {}
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "torch.nn.functional" and alias.asname:
                    modules.add(alias.asname)
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch.nn", "torch.nn.functional"):
            for alias in node.names:
                if node.module == "torch.nn" and alias.name == "functional":
                    modules.add(alias.asname or alias.name)
                elif node.module == "torch.nn.functional" and alias.name in _DROPOUTS | {"batch_norm"}:
                    functions[alias.asname or alias.name] = alias.name
    return modules, functions


def _functional_name(call: ast.Call, modules: set[str], functions: dict[str, str]) -> str | None:
    dotted = dotted_name(call.func)
    if dotted is None:
        return None
    if dotted in functions:
        return functions[dotted]
    prefix, _, name = dotted.rpartition(".")
    return name if prefix in modules or prefix == "F" else None


def _training_argument(call: ast.Call, index: int) -> ast.expr | None:
    if len(call.args) > index:
        return call.args[index]
    return keyword_value(call, "training")


def _statements(tree: ast.Module) -> Iterator[ast.stmt]:
    """Every statement of the module, in :func:`ast.walk`'s breadth-first order, without visiting
    expressions (imports and class definitions are statements; a full walk was most of MODE003's time)."""
    todo = collections.deque(tree.body)
    while todo:
        node = todo.popleft()
        yield node
        for name in ("body", "orelse", "finalbody"):
            todo.extend(getattr(node, name, ()))
        for handler in getattr(node, "handlers", ()):
            todo.extend(handler.body)
        for case in getattr(node, "cases", ()):
            todo.extend(case.body)


def _forward_methods(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in _statements(tree):
        if isinstance(node, ast.ClassDef) and node.bases:
            for stmt in node.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == "forward":
                    yield stmt


#: layers whose behaviour depends on the mode; built inside forward() they are always training
_MODE_LAYERS = frozenset(
    {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"}
    | {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d"}
)


def _fresh_layer_finding(call: ast.Call, path: str) -> Finding | None:
    """``nn.Dropout(0.5)(x)`` in forward(): a new module, in training mode whatever the model's mode."""
    if not isinstance(call.func, ast.Call):
        return None
    layer = (dotted_name(call.func.func) or "").rpartition(".")[2]
    if layer not in _MODE_LAYERS:
        return None
    message = (
        f"`{source_text(call.func)}(...)` builds a new {layer} inside forward(); it is always in training "
        "mode, also after model.eval(); create it in __init__ instead"
    )
    return Finding(path, call.lineno, call.col_offset + 1, "MODE003", message)


def functional_mode_findings(tree: ast.Module, path: str) -> list[Finding]:
    """MODE003: a functional dropout in ``forward`` that is on in eval mode too, or a
    ``F.batch_norm(..., training=True)`` that always uses (and updates) batch statistics."""
    modules, functions = _functional_aliases(tree)
    out: list[Finding] = []
    for method in _forward_methods(tree):
        for call in (node for node in ast.walk(method) if isinstance(node, ast.Call)):
            fresh = _fresh_layer_finding(call, path)
            if fresh is not None:
                out.append(fresh)
                continue
            name = _functional_name(call, modules, functions)
            base = name.rpartition(".")[2] if name else ""
            if base in _DROPOUTS:
                arg = _training_argument(call, 2)
                if arg is None or (isinstance(arg, ast.Constant) and arg.value is True):
                    what = "without `training=self.training`" if arg is None else "with `training=True`"
                    message = (
                        f"`{source_text(call.func)}(...)` in forward() {what} drops units in eval mode "
                        "too; pass `training=self.training` or use `nn.Dropout`"
                    )
                    out.append(Finding(path, call.lineno, call.col_offset + 1, "MODE003", message))
            elif base == "batch_norm":
                arg = _training_argument(call, _BATCH_NORM_TRAINING_INDEX)
                if isinstance(arg, ast.Constant) and arg.value is True:
                    message = (
                        f"`{source_text(call.func)}(..., training=True)` in forward() uses batch statistics "
                        "in eval mode too; pass `training=self.training` or use `nn.BatchNorm`"
                    )
                    out.append(Finding(path, call.lineno, call.col_offset + 1, "MODE003", message))
    return out
