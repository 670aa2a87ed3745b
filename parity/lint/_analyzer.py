"""One module's analysis: the interpreter assembled from its parts, run from every entry point."""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable

from parity.lint._expressions import ExpressionMixin
from parity.lint._findings import Finding
from parity.lint._frames import CallRecord, ClassInfo, Frame, FuncRef, LoopRun
from parity.lint._inlining import InliningMixin
from parity.lint._project import ProjectIndex, ProjectMixin
from parity.lint._rules import RuleMixin
from parity.lint._scope import ScopeMixin
from parity.lint._state import ModeState, Value
from parity.lint._statements import BudgetExceeded, StatementMixin
from parity.lint._syntax import FunctionNode, direct_defs, is_autograd_call, is_step_call

FILE_BUDGET = 200_000  # interpreted statements per file before skipping the remaining entries


class ModuleAnalyzer(StatementMixin, ExpressionMixin, InliningMixin, RuleMixin, ProjectMixin, ScopeMixin):
    """Interprets one parsed module and collects MODE001/MODE002/MODE009 findings."""

    def __init__(self, tree: ast.Module, path: str, project: ProjectIndex | None = None) -> None:
        """Empty tables for ``tree``; ``project`` resolves imports into other files (optional)."""
        self.tree = tree
        self.path = path
        self.project = project
        self.module = Frame(tree, None, "<module>")
        self.module.file = path
        self.current = self.module  # the module frame of the code being interpreted
        self.classes: dict[str, ClassInfo] = {}
        self.class_index: dict[tuple[str, str], ClassInfo] = {}  # (module file, class name) -> class
        self.class_frames: dict[str, Frame] = {}
        self.method_owners: dict[str, list[str]] = {}
        self.alias: dict[str, str] = {}
        self.obj_class: dict[str, str] = {}
        self.frozen: set[str] = set()
        self.trained: set[str] = set()
        self.train_sites: dict[str, tuple[str, int]] = {}  # object -> where train() last ran on it
        shared = project if project is not None else ProjectIndex([], lambda path: None)
        self.defs_cache = shared.defs_cache  # syntax facts, shared by every file of a project
        self.class_infos = shared.class_infos
        self.scope_cache = shared.scope_cache
        self.parameter_calls = shared.parameter_calls
        self.loop_trains = shared.loop_trains
        self.children_cache = shared.children_cache
        self.param_owner: dict[str, str] = {}
        self.sites: dict[tuple[str, int, int], tuple[str, str]] = {}
        self.entered: set[ast.AST] = set()
        self.stack: list[CallRecord] = []
        self.loops: list[LoopRun] = []
        self.no_grad = 0
        self.steps = 0
        self.total_steps = 0
        self.candidates: dict[tuple, tuple[Finding, str]] = {}
        #: call summaries: a call that wrote nothing outside the mode state and its own frames
        #: (``touches`` did not move) is replayed, state after and result, when the same call
        #: meets the same state, arguments, bindings and tables again
        self.touches = 0  # writes to the tables below, global stores, eval sites, steps, cuts
        self.bindings = 0  # module-level bindings and modules loaded so far
        self.summaries: dict[tuple, tuple[ModeState, Value]] = {}
        self.summaries_used = 0
        self.foreign_steps = 0  # statements interpreted in other files' code (CROSS_FILE_BUDGET)
        self.steps_seen = 0  # training steps interpreted (also those in other files)
        self.incomplete: dict[str, int] = {}  # reason -> how often the analysis was cut short
        self.module_frames: dict[str, Frame] = {}
        self.unresolved_imports: set[str] = set()  # other modules whose imports are not bound yet

    @functools.cached_property
    def has_training(self) -> bool:
        """The module has a training step anywhere (MODE002 needs none); one walk of the whole
        tree, so it is computed only when a MODE002 candidate asks for it."""
        return any(
            isinstance(node, ast.Call) and (is_step_call(node) or is_autograd_call(node))
            for node in ast.walk(self.tree)
        )

    def register_definitions(self, tree: ast.Module, frame: Frame, module: str = "") -> None:
        """Index the classes and functions defined (at any block depth) in a module body."""
        definitions = self.defs_cache.get(tree)
        if definitions is None:
            definitions = self.defs_cache[tree] = list(direct_defs(tree.body))
        for definition in definitions:
            if isinstance(definition, ast.ClassDef):
                if definition.name in self.classes:
                    continue
                info = self.class_infos.get(definition)
                if info is None:
                    info = self.class_infos[definition] = ClassInfo(definition, module)
                self.classes[definition.name] = info
                self.class_index[(module, definition.name)] = info
                self.class_frames[definition.name] = frame
                for meth in info.methods:
                    self.method_owners.setdefault(meth, []).append(definition.name)
            else:
                frame.funcs.setdefault(definition.name, FuncRef(definition, frame, None))

    def analyse(self) -> list[Finding]:
        """Run the module body, then every function and method it did not reach."""
        self.register_definitions(self.tree, self.module, self.path)
        self._entry(lambda: self._block(self.tree.body, self.module, ModeState()))
        for ref in sorted(self.module.funcs.values(), key=lambda ref: ref.node.lineno):
            if ref.frame is not self.module:
                continue  # imported from another module: entered from its own file
            if ref.node not in self.entered:
                self._entry(lambda fnode=ref.node: self._call_entry(fnode, None, None))
        for cname, info in list(self.classes.items()):
            if self.class_frames[cname] is not self.module:
                continue  # classes of other modules are entered from their own file
            for fnode in info.methods.values():
                if fnode not in self.entered:
                    self_val = f"self@{cname}"
                    self.obj_class[self_val] = cname
                    self._entry(lambda f=fnode, c=cname, s=self_val: self._call_entry(f, c, s))
        if self.project is not None:  # an ambiguous import matters only where training is reached
            self.project.steps_seen_last = self.steps_seen
        trained = self._trained_models()
        out = [
            finding
            for finding, oid in self.candidates.values()
            if (finding.code != "MODE001" or (oid not in self.frozen and oid in trained))
            and (finding.code != "MODE002" or not self.steps_seen)
        ]
        return sorted(out + self._incomplete_findings())

    def _trained_models(self) -> set[str]:
        """Trained objects, and every object whose submodule is trained: an optimizer over
        ``model.encoder.parameters()`` trains ``model`` (and ``self.model`` for ``self.model.head``)."""
        out = set(self.trained)
        for oid in self.trained:
            parts = oid.split(".")
            out.update(".".join(parts[:end]) for end in range(1, len(parts)))
        return out

    def _entry(self, run: Callable[[], object]) -> None:
        if self.total_steps > FILE_BUDGET:
            self.incomplete["file budget"] = self.incomplete.get("file budget", 0) + 1
            return
        self.stack, self.loops, self.no_grad, self.steps = [], [], 0, 0
        try:
            run()
        except BudgetExceeded:
            self.incomplete["statement budget"] = self.incomplete.get("statement budget", 0) + 1
        except RecursionError:
            self.incomplete["nesting too deep"] = self.incomplete.get("nesting too deep", 0) + 1
        self.total_steps += self.steps

    def _call_entry(self, fnode: FunctionNode, cls: str | None, self_val: str | None) -> None:
        call = ast.Call(func=ast.Name(id=fnode.name, ctx=ast.Load()), args=[], keywords=[])
        ast.copy_location(call, fnode)
        call.lint_entry = True  # type: ignore[attr-defined]
        frame = self.class_frames.get(cls, self.module) if cls else self.module
        self._inline(
            FuncRef(fnode, frame, cls), call, self.module, ModeState(), [], {}, self_val, label=fnode.name
        )

    def _incomplete_findings(self) -> list[Finding]:
        if not self.incomplete:
            return []
        reasons = ", ".join(f"{reason} ({count}x)" for reason, count in sorted(self.incomplete.items()))
        message = f"analysis incomplete: {reasons}; findings in this file may be missing"
        return [Finding(self.path, 1, 1, "MODE009", message)]
