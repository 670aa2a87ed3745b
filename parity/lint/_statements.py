"""Statements: one handler per statement type, dispatched through a table."""

from __future__ import annotations

import ast
from collections.abc import Callable

from parity.lint._expressions import Members
from parity.lint._frames import Frame, FuncRef, LoopRun, SavedFlag
from parity.lint._scope import UNKNOWN_CONSTANT
from parity.lint._state import TRAIN, UNKNOWN, ModeFact, ModeState, Value, join_states, only_evals
from parity.lint._syntax import is_main_guard, is_step_call, last_name

MAX_LOOP_PASSES = 3  # a loop body is interpreted at least twice, at most this often
STEP_BUDGET = 20_000  # interpreted statements per entry point before giving up on it


class BudgetExceeded(Exception):
    """Raised when one entry point interprets too many statements."""


Outcome = ModeState | None  # the state after a statement; None when it never completes
StatementHandler = Callable[["StatementMixin", ast.stmt, Frame, ModeState], Outcome]


def _loop_trains(loop: ast.For | ast.AsyncFor | ast.While) -> bool:
    """Whether a training step (backward / optimizer step) is written inside the loop body."""
    return any(
        isinstance(node, ast.Call) and is_step_call(node) for stmt in loop.body for node in ast.walk(stmt)
    )


class StatementMixin:
    """Interprets statements; expressions and calls come from the expression mixin."""

    steps: int
    foreign_steps: int
    touches: int
    bindings: int
    current: Frame
    module: Frame
    loops: list[LoopRun]
    stack: list
    no_grad: int
    alias: dict[str, str]
    frozen: set[str]
    param_owner: dict[str, str]
    loop_trains: dict[ast.AST, bool]

    def _block(self, stmts: list[ast.stmt], frame: Frame, state: Outcome) -> Outcome:
        for stmt in stmts:
            if state is None:
                return None
            state = self._stmt(stmt, frame, state)
        return state

    def _stmt(self, stmt: ast.stmt, frame: Frame, state: ModeState) -> Outcome:
        self.steps += 1
        if self.steps > STEP_BUDGET:
            raise BudgetExceeded
        if self.current is not self.module:
            self.foreign_steps += 1
        handler = STATEMENT_HANDLERS.get(type(stmt))
        return state if handler is None else handler(self, stmt, frame, state)

    # ------------------------------------------------------------------ simple statements

    def _expr_stmt(self, stmt: ast.Expr, frame: Frame, state: ModeState) -> Outcome:
        self._expr(stmt.value, frame, state)
        return state

    def _assign_stmt(self, stmt: ast.Assign, frame: Frame, state: ModeState) -> Outcome:
        held = self._callable_of(stmt.value, frame)
        value = self._expr(stmt.value, frame, state)
        const = self._constant(stmt.value, frame)
        for target in stmt.targets:
            self._assign(target, value, frame, state, const)
            if held is not None and isinstance(target, ast.Name) and target.id not in frame.globals:
                frame.callables[target.id] = held  # step = functools.partial(my_loss, scale=2)
        self._saved_flag(stmt, frame, state)
        return state

    def _ann_assign_stmt(self, stmt: ast.AnnAssign, frame: Frame, state: ModeState) -> Outcome:
        if stmt.value is not None:
            value = self._expr(stmt.value, frame, state)
            self._assign(stmt.target, value, frame, state, self._constant(stmt.value, frame))
        return state

    def _aug_assign_stmt(self, stmt: ast.AugAssign, frame: Frame, state: ModeState) -> Outcome:
        self._expr(stmt.value, frame, state)
        if isinstance(stmt.target, ast.Name):
            self._bind(frame, stmt.target.id, self._lookup(frame, stmt.target.id))
        return state

    def _return_stmt(self, stmt: ast.Return, frame: Frame, state: ModeState) -> Outcome:
        value = self._expr(stmt.value, frame, state) if stmt.value is not None else None
        after = self._through_finally(frame, state.copy(), 0)
        if after is not None:
            frame.returns.append((after, value))
        return None

    def _jump_stmt(self, stmt: ast.Break | ast.Continue, frame: Frame, state: ModeState) -> Outcome:
        if frame.loops:
            loop = frame.loops[-1]
            after = self._through_finally(frame, state.copy(), loop.finally_depth)
            if after is not None:
                (loop.breaks if isinstance(stmt, ast.Break) else loop.continues).append(after)
        return None

    def _raise_stmt(self, stmt: ast.Raise, frame: Frame, state: ModeState) -> Outcome:
        if stmt.exc is not None:
            self._expr(stmt.exc, frame, state)
        return None

    def _def_stmt(
        self, stmt: ast.FunctionDef | ast.AsyncFunctionDef, frame: Frame, state: ModeState
    ) -> Outcome:
        frame.env.pop(stmt.name, None)
        frame.funcs[stmt.name] = FuncRef(stmt, frame, None)
        self.bindings += frame.parent is None  # a module-level definition can change what a call reaches
        return state

    def _global_stmt(self, stmt: ast.Global, frame: Frame, state: ModeState) -> Outcome:
        frame.globals.update(stmt.names)
        return state

    def _nonlocal_stmt(self, stmt: ast.Nonlocal, frame: Frame, state: ModeState) -> Outcome:
        frame.nonlocals.update(stmt.names)
        return state

    def _import_stmt(self, stmt: ast.Import | ast.ImportFrom, frame: Frame, state: ModeState) -> Outcome:
        for alias in stmt.names:
            if alias.name != "*":
                name = (alias.asname or alias.name).split(".")[0]
                self._bind(frame, name, f"import:{name}")
                self._import_definition(stmt, alias, frame)
        return state

    def _match_stmt(self, stmt: ast.Match, frame: Frame, state: ModeState) -> Outcome:
        self._expr(stmt.subject, frame, state)
        outs = [self._block(case.body, frame, state.copy()) for case in stmt.cases]
        return join_states([*outs, state])

    def _assert_stmt(self, stmt: ast.Assert, frame: Frame, state: ModeState) -> Outcome:
        self._expr(stmt.test, frame, state)
        return state

    # ------------------------------------------------------------------ branches

    def _if_stmt(self, stmt: ast.If, frame: Frame, state: ModeState) -> Outcome:
        """Prune a branch whose test is a known constant; otherwise join both branches."""
        if is_main_guard(stmt.test):
            return self._block(stmt.body, frame, state)
        const = self._branch_constant(stmt.test, frame)
        if const is UNKNOWN_CONSTANT:
            const = self._member_none_test(stmt.test, frame)
        if const is not UNKNOWN_CONSTANT:
            self._expr(stmt.test, frame, state)
            return self._block(stmt.body if const else stmt.orelse, frame, state)
        self._expr(stmt.test, frame, state)
        then, other = state.copy(), state
        self._refine(stmt.test, frame, then, other)
        return join_states([self._block(stmt.body, frame, then), self._block(stmt.orelse, frame, other)])

    def _member_none_test(self, test: ast.expr, frame: Frame) -> object:
        """``if m is None: continue`` in ``for m in [gen, disc]``, every member a known model:
        never true (``is not None``: always true). Without this, the path that skips a member
        keeps its old mode and ``set_mode("train", models)`` would not count as a restore."""
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
            return UNKNOWN_CONSTANT
        operator, left, right = test.ops[0], test.left, test.comparators[0]
        if isinstance(left, ast.Constant):
            left, right = right, left
        if not (isinstance(operator, (ast.Is, ast.IsNot)) and isinstance(right, ast.Constant)):
            return UNKNOWN_CONSTANT
        if right.value is not None or not isinstance(left, ast.Name):
            return UNKNOWN_CONSTANT
        value = self._lookup(frame, left.id)
        if not (isinstance(value, Members) and value and all(isinstance(item, str) for item in value)):
            return UNKNOWN_CONSTANT
        return isinstance(operator, ast.IsNot)

    def _refine(self, test: ast.expr, frame: Frame, then: ModeState, other: ModeState) -> None:
        """``if model.training:`` / ``if was_training:`` tell which mode each branch has."""
        negate = False
        while isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            test, negate = test.operand, not negate
        training, evaluating = (other, then) if negate else (then, other)
        if isinstance(test, ast.Name) and test.id in frame.flags:
            self._refine_saved_flag(frame.flags[test.id], evaluating)
            return
        if not (isinstance(test, ast.Attribute) and test.attr == "training"):
            return
        oid = self._resolve_static(test.value, frame)
        if oid is None:
            return
        facts = training.mode(oid)
        kept = frozenset(fact for fact in facts if not fact.is_eval)
        training.set_mode(oid, kept or frozenset({TRAIN}))
        evaluating.set_mode(oid, only_evals(facts) or frozenset({UNKNOWN}))

    @staticmethod
    def _refine_saved_flag(flag: SavedFlag, evaluating: ModeState) -> None:
        """In the branch where ``was_training`` is false, the model was already in eval mode
        when the flag was saved: evals since then only keep it there, so the blame stays with
        the evals it had at the save (or none known: *unknown*, as for ``train(flag)``)."""
        current = evaluating.mode(flag.oid)
        kept = frozenset(fact for fact in current if not fact.is_eval)
        if kept == current:
            return  # no eval since the save in this branch: nothing to re-attribute
        evaluating.set_mode(flag.oid, kept | (only_evals(flag.facts) or frozenset({UNKNOWN})))

    def _saved_flag(self, stmt: ast.Assign, frame: Frame, state: ModeState) -> None:
        """``was_training = model.training`` records the model's mode under that name."""
        value = stmt.value
        if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
            return
        if isinstance(value, ast.Attribute) and value.attr == "training":
            oid = self._resolve_static(value.value, frame)
            if oid is not None:
                frame.flags[stmt.targets[0].id] = SavedFlag(oid, state.mode(oid))

    # ------------------------------------------------------------------ assignment

    def _assign(
        self, target: ast.expr, value: Value, frame: Frame, state: ModeState, const: object = UNKNOWN_CONSTANT
    ) -> None:
        """Bind ``value`` to a name, an attribute path, or the elements of a tuple target."""
        if isinstance(target, ast.Name):
            bound = value if value is not None else self._new_object(target, state)
            self._bind(frame, target.id, bound, const)
            frame.flags.pop(target.id, None)
        elif isinstance(target, ast.Attribute):
            self._assign_attribute(target, value, frame, state, const)
        elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, Members):
            self._assign_columns(target, value, frame, state)
        elif isinstance(target, (ast.Tuple, ast.List)):
            elts = target.elts
            spread = isinstance(value, tuple) and len(value) == len(elts)
            if spread and not any(isinstance(elt, ast.Starred) for elt in elts):
                for elt, item in zip(elts, value):  # type: ignore[arg-type]
                    self._assign(elt, item, frame, state)
            else:
                for elt in elts:
                    self._assign(elt, None, frame, state)
        elif isinstance(target, ast.Starred):
            self._assign(target.value, None, frame, state)
        elif isinstance(target, ast.Subscript):
            self._expr(target.value, frame, state)
            self._expr(target.slice, frame, state)

    def _assign_columns(
        self, target: ast.Tuple | ast.List, value: Members, frame: Frame, state: ModeState
    ) -> None:
        """``for name, net in nets.items():`` each target name ranges over one column."""
        width = len(target.elts)
        if all(isinstance(row, tuple) and len(row) == width for row in value):
            for index, elt in enumerate(target.elts):
                self._assign(elt, Members(row[index] for row in value), frame, state)  # type: ignore[index]
        else:
            for elt in target.elts:
                self._assign(elt, None, frame, state)

    def _assign_attribute(
        self, target: ast.Attribute, value: Value, frame: Frame, state: ModeState, const: object
    ) -> None:
        base = self._expr(target.value, frame, state)
        if not isinstance(base, str):
            return
        self.touches += 1
        if target.attr == "requires_grad" and const is False and base in self.param_owner:
            self.frozen.add(self.param_owner[base])
        path = f"{base}.{target.attr}"
        self.alias[path] = value if isinstance(value, str) else self._new_object(target, state)

    def _through_finally(self, frame: Frame, state: Outcome, floor: int) -> Outcome:
        """Run the pending ``finally:`` blocks (innermost first) down to ``floor``."""
        saved = frame.finally_stack
        try:
            for index in range(len(saved) - 1, floor - 1, -1):
                if state is None:
                    break
                frame.finally_stack = saved[:index]
                state = saved[index](state)
        finally:
            frame.finally_stack = saved
        return state

    # ------------------------------------------------------------------ loops, with, try

    def _loop_stmt(self, stmt: ast.For | ast.AsyncFor | ast.While, frame: Frame, state: ModeState) -> Outcome:
        """Run the body until the state at its end is a fixed point (at least twice)."""
        is_while = isinstance(stmt, ast.While)
        infinite = is_while and isinstance(stmt.test, ast.Constant) and bool(stmt.test.value)
        owner = None if is_while else self._loop_iter(stmt, frame, state)
        trains = self.loop_trains.get(stmt)
        if trains is None:  # one walk of the body per loop for the whole run, not per pass
            trains = self.loop_trains[stmt] = _loop_trains(stmt)
        loop = LoopRun(stmt.lineno, len(self.stack), len(frame.finally_stack), trains)
        loop.file = frame.file
        tails: list[ModeState] = []
        breaks: list[ModeState] = []
        start = state.copy()
        for _ in range(MAX_LOOP_PASSES):
            loop.breaks, loop.continues = [], []
            current = start.copy()
            self._loop_head(stmt, owner, frame, current)
            frame.loops.append(loop)
            self.loops.append(loop)
            try:
                end = self._block(stmt.body, frame, current)
            finally:
                frame.loops.pop()
                self.loops.pop()
            tail = join_states([end, *loop.continues])
            breaks.extend(loop.breaks)
            if tail is not None:
                tails.append(tail)
            new_start = join_states([start, tail])
            if new_start == start:
                break
            start = new_start  # type: ignore[assignment]
        # A loop over a known, non-empty collection runs at least once.
        runs_once = not is_while and bool(self._iteration_value(stmt.iter, frame, state.copy()))
        normal = None if infinite else join_states(tails if runs_once and tails else [state, *tails])
        if stmt.orelse and normal is not None:
            normal = self._block(stmt.orelse, frame, normal)
        return join_states([normal, *breaks])

    def _loop_iter(self, stmt: ast.For | ast.AsyncFor, frame: Frame, state: ModeState) -> str | None:
        """Evaluate the iterable; return the model whose ``parameters()`` are iterated, if any."""
        self._expr(stmt.iter, frame, state)
        iterable = stmt.iter
        if (
            isinstance(iterable, ast.Call)
            and isinstance(iterable.func, ast.Attribute)
            and iterable.func.attr in ("parameters", "named_parameters")
        ):
            return self._resolve_static(iterable.func.value, frame)
        return None

    def _loop_head(
        self, stmt: ast.For | ast.AsyncFor | ast.While, owner: str | None, frame: Frame, state: ModeState
    ) -> None:
        """The loop test, or the binding of the loop target (models of a collection included)."""
        if isinstance(stmt, ast.While):
            self._expr(stmt.test, frame, state)
            return
        self._assign(stmt.target, self._iteration_value(stmt.iter, frame, state), frame, state)
        if owner is None:
            return
        target = stmt.target
        if isinstance(target, ast.Tuple) and len(target.elts) == 2:
            target = target.elts[1]
        if isinstance(target, ast.Name):
            param = self._lookup(frame, target.id)
            if isinstance(param, str):
                self.touches += 1
                self.param_owner[param] = owner

    def _with_stmt(self, stmt: ast.With | ast.AsyncWith, frame: Frame, state: ModeState) -> Outcome:
        """``torch.no_grad()`` counts; an ``eval_mode(model)``-like manager restores the mode."""
        restore: dict[str, frozenset[ModeFact]] = {}
        no_grad = 0
        for item in stmt.items:
            context = item.context_expr
            value: Value = None
            callee = last_name(context.func).lower() if isinstance(context, ast.Call) else ""
            if isinstance(context, ast.Call) and self._disables_grad(context, callee, frame):
                no_grad += 1
            elif isinstance(context, ast.Call) and "eval" in callee:
                # Heuristic: a context manager named like eval_mode(model) restores the mode.
                for arg in [*context.args, *(keyword.value for keyword in context.keywords)]:
                    for oid in self._objects(self._expr(arg, frame, state)):
                        restore.setdefault(oid, state.mode(oid))
                        state.set_mode(oid, frozenset({UNKNOWN}))
            else:
                value = self._expr(context, frame, state)
            if item.optional_vars is not None:
                self._assign(item.optional_vars, None if no_grad else value, frame, state)

        def leave(after: ModeState) -> ModeState:
            for oid, facts in restore.items():
                after.set_mode(oid, facts)
            return after

        if restore:
            frame.finally_stack.append(leave)
        self.no_grad += no_grad
        try:
            end = self._block(stmt.body, frame, state)
        finally:
            self.no_grad -= no_grad
            if restore:
                frame.finally_stack.pop()
        return leave(end) if end is not None else None

    def _disables_grad(self, context: ast.Call, callee: str, frame: Frame) -> bool:
        if callee in ("no_grad", "inference_mode"):
            return True
        return (
            callee == "set_grad_enabled"
            and bool(context.args)
            and self._const_bool(context.args[0], frame) is False
        )

    def _try_stmt(self, stmt: ast.Try, frame: Frame, state: ModeState) -> Outcome:
        """Handlers start from the join of entry and body end; ``finally`` runs on every exit."""
        final = stmt.finalbody
        if final:
            frame.finally_stack.append(lambda after: self._block(final, frame, after))
        try:
            body_end = self._block(stmt.body, frame, state.copy())
            handler_start = join_states([state, body_end])
            outs: list[Outcome] = []
            for handler in stmt.handlers:
                handler_state = handler_start.copy()  # type: ignore[union-attr]
                if handler.type is not None:
                    self._expr(handler.type, frame, handler_state)
                if handler.name:
                    self._bind(frame, handler.name, self._fresh(handler))
                outs.append(self._block(handler.body, frame, handler_state))
            if stmt.orelse and body_end is not None:
                body_end = self._block(stmt.orelse, frame, body_end)
        finally:
            if final:
                frame.finally_stack.pop()
        after = join_states([body_end, *outs])
        if final and after is not None:
            after = self._block(final, frame, after)
        return after


STATEMENT_HANDLERS: dict[type, StatementHandler] = {
    ast.Expr: StatementMixin._expr_stmt,
    ast.Assign: StatementMixin._assign_stmt,
    ast.AnnAssign: StatementMixin._ann_assign_stmt,
    ast.AugAssign: StatementMixin._aug_assign_stmt,
    ast.If: StatementMixin._if_stmt,
    ast.For: StatementMixin._loop_stmt,
    ast.AsyncFor: StatementMixin._loop_stmt,
    ast.While: StatementMixin._loop_stmt,
    ast.With: StatementMixin._with_stmt,
    ast.AsyncWith: StatementMixin._with_stmt,
    ast.Try: StatementMixin._try_stmt,
    ast.Return: StatementMixin._return_stmt,
    ast.Break: StatementMixin._jump_stmt,
    ast.Continue: StatementMixin._jump_stmt,
    ast.Raise: StatementMixin._raise_stmt,
    ast.FunctionDef: StatementMixin._def_stmt,
    ast.AsyncFunctionDef: StatementMixin._def_stmt,
    ast.Global: StatementMixin._global_stmt,
    ast.Nonlocal: StatementMixin._nonlocal_stmt,
    ast.Import: StatementMixin._import_stmt,
    ast.ImportFrom: StatementMixin._import_stmt,
    ast.Match: StatementMixin._match_stmt,
    ast.Assert: StatementMixin._assert_stmt,
}
if hasattr(ast, "TryStar"):  # Python 3.11+: ``except*`` is interpreted like ``except``
    STATEMENT_HANDLERS[ast.TryStar] = StatementMixin._try_stmt
