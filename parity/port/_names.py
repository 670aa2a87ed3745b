"""Readable names in a translated ``__call__`` body, as passes over its lines.

The translation (:mod:`parity.port._graph`) writes one statement per fx node, named after the
node (``getitem_1``, ``add``); these passes then make the body read like the torch source:

- :func:`merge_reads`: consecutive ``a = x.shape[0]``, ``b = x.shape[1]`` become
  ``a, b = x.shape`` (``x.shape[:2]`` when ``x`` has more axes), and a split read item by item
  (``s = jnp.split(...)``, ``q = s[0]``, ...) one unpacking ``q, k, v = jnp.split(...)``;
- :func:`drop_unused`: statements whose values nothing reads are dropped;
- :func:`rename`: each variable takes the name the torch ``forward`` gave its value (recorded
  while tracing, :class:`LocalNames`) where that name is free over the variable's lifetime:
  a name is reused (``x = f(x)``) once its previous value is no longer read;
- :func:`inline_return`: ``y = expr`` followed by ``return y`` becomes ``return expr``.
"""

from __future__ import annotations

import builtins
import io
import keyword
import re
import sys
import tokenize
from dataclasses import dataclass, field
from typing import Any

from torch import fx

_SHAPE_READ = re.compile(r"^(\w+) = (\w+)\.shape\[(\d+)\]$")
_ITEM_READ = re.compile(r"^(\w+) = (\w+)\[(\d+)\]$")
_IDENT = re.compile(r"^[A-Za-z_]\w*$")
_BUILTINS = set(dir(builtins))


class LocalNames:
    """While tracing, the local variable of ``forward`` that first held each fx node's value
    (``b, t, c = x.size()`` names the three ``getitem`` nodes ``b``, ``t``, ``c``).

    A ``sys.settrace`` hook on that one function's frames reads its locals after each line;
    fx may run a copy of ``forward``'s code object, so frames match by file, line and name.
    """

    def __init__(self, forward: Any) -> None:
        code = getattr(forward, "__code__", None)
        self.key = (code.co_filename, code.co_firstlineno, code.co_name) if code else None
        self.names: dict[fx.Node, str] = {}

    def __enter__(self) -> LocalNames:
        self.previous = sys.gettrace()
        if self.key is not None:
            sys.settrace(self._call)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self.previous)

    def _call(self, frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        return self._line if (code.co_filename, code.co_firstlineno, code.co_name) == self.key else None

    def _line(self, frame: Any, event: str, arg: Any) -> Any:
        if event in ("line", "return"):
            for name, value in frame.f_locals.items():
                if isinstance(value, fx.Proxy) and value.node.op != "placeholder":
                    self.names.setdefault(value.node, name)
        return self._line


# ------------------------------------------------------------------ merges
def merge_reads(
    lines: list[str], ranks: dict[str, int | None], seq_len: dict[str, int], named: set[str]
) -> list[str]:
    """Shape reads and split items unpacked in one statement (see the module docstring); a
    lone shape read the forward gave no name (``x.shape[0]`` inline) is inlined where used."""
    out = _unpack_reads(lines, ranks, seq_len)
    for i, line in enumerate(out):
        m = _SHAPE_READ.match(line)
        if m is not None and m.group(1) not in named:
            read = line.split(" = ", 1)[1]
            out[i] = ""
            out[i + 1 :] = [_apply(p, {}, {m.group(1): read}) for p in map(_parse, out[i + 1 :])]
    return [line for line in out if line]


def _unpack_reads(lines: list[str], ranks: dict[str, int | None], seq_len: dict[str, int]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        run = _shape_run(lines, i)
        if len(run) >= 2:
            x = _SHAPE_READ.match(lines[i]).group(2)
            whole = ranks.get(x) == len(run)
            out.append(f"{', '.join(run)} = {x}.shape" + ("" if whole else f"[:{len(run)}]"))
            i += len(run)
            continue
        unpacked = _unpacking(lines, i, seq_len)
        if unpacked is not None:
            out.append(unpacked)
            i += 1 + seq_len[lines[i].split(" = ", 1)[0]]
            continue
        out.append(lines[i])
        i += 1
    return out


def _shape_run(lines: list[str], start: int) -> list[str]:
    """The names of consecutive reads ``n0 = x.shape[0]``, ``n1 = x.shape[1]``, ... at ``start``."""
    names, x = [], None
    for line in lines[start:]:
        m = _SHAPE_READ.match(line)
        if m is None or int(m.group(3)) != len(names) or (x is not None and m.group(2) != x):
            break
        x = m.group(2)
        names.append(m.group(1))
    return names


def _unpacking(lines: list[str], start: int, seq_len: dict[str, int]) -> str | None:
    """``a, b = expr`` when ``lines[start]`` is ``s = expr`` of a sequence of known length read
    item by item just below, and ``s`` is read nowhere else."""
    s, _, expr = lines[start].partition(" = ")
    n = seq_len.get(s)
    if not n:
        return None
    items = [_ITEM_READ.match(line) for line in lines[start + 1 : start + 1 + n]]
    if len(items) != n or any(
        m is None or m.group(2) != s or m.group(3) != str(k) for k, m in enumerate(items)
    ):
        return None
    rest = lines[:start] + lines[start + 1 + n :]
    if any(mentions(line, s) for line in rest):
        return None
    return f"{', '.join(m.group(1) for m in items)} = {expr}"


def drop_unused(lines: list[str]) -> list[str]:
    """Without statements whose values nothing reads (``c // 2`` written for a split whose sizes
    were known): pure array arithmetic only, never a module call (``self.``), a stub or a loop;
    a comment just above a dropped statement goes with it."""
    parsed = [_parse(line) for line in lines]
    drop: set[int] = set()
    changed = True
    while changed:
        changed = False
        read = {n for i, p in enumerate(parsed) if i not in drop for n, _, _ in p.uses}
        for i, p in enumerate(parsed):
            pure = "self." not in p.text and "not_translated" not in p.text and not p.loop
            if i not in drop and p.defs and pure and not any(n in read for n, _, _ in p.defs):
                drop.add(i)
                changed = True
    drop |= {i - 1 for i in drop if i and lines[i - 1].startswith("#")}
    return [line for i, line in enumerate(lines) if i not in drop]


# ------------------------------------------------------------------ renaming
@dataclass
class _Line:
    """One line split into tokens: where its assigned names and read names are."""

    indent: str
    text: str
    defs: list[tuple[str, int, int]] = field(default_factory=list)  # (name, start, end) columns
    uses: list[tuple[str, int, int]] = field(default_factory=list)
    loop: bool = False  # a ``for`` header, or a line inside a loop


def _parse(line: str) -> _Line:
    text = line.lstrip(" ")
    parsed = _Line(line[: len(line) - len(text)], text)
    if text.startswith("#"):
        return parsed
    parsed.loop = bool(parsed.indent) or text.startswith("for ")
    tokens = list(tokenize.generate_tokens(io.StringIO(text + "\n").readline))
    assign = next(
        (
            k
            for k, t in enumerate(tokens)
            if t.type == tokenize.OP and t.string == "=" and _depth(tokens, k) == 0
        ),
        None,
    )
    loop_in = (
        next((k for k, t in enumerate(tokens) if t.string == "in"), None) if text.startswith("for ") else None
    )
    for k, t in enumerate(tokens):
        if t.type != tokenize.NAME or keyword.iskeyword(t.string):
            continue
        if k and tokens[k - 1].string == ".":
            continue  # an attribute
        after = tokens[k + 1].string if k + 1 < len(tokens) else ""
        if after == "=" and _depth(tokens, k) > 0:
            continue  # a keyword argument's name
        span = (t.string, t.start[1], t.end[1])
        lhs = (assign is not None and k < assign) or (loop_in is not None and k < loop_in)
        (parsed.defs if lhs else parsed.uses).append(span)
    return parsed


def _depth(tokens: list, k: int) -> int:
    depth = 0
    for t in tokens[:k]:
        if t.type == tokenize.OP:
            depth += t.string in "([{"
            depth -= t.string in ")]}"
    return depth


def rename(lines: list[str], args: list[str], wanted: dict[str, str], reserved: set[str]) -> list[str]:
    """``lines`` with each variable ``v`` of ``wanted`` renamed ``wanted[v]`` where that name is
    free from ``v``'s assignment to its last read: no other variable of that name is alive then,
    and the name is no argument still read, no global or module name used in the body, not
    ``reserved``. Variables assigned twice or in a loop, and the arguments, keep their names;
    but for a loop's accumulator (``h = x`` / ``for block in ...:`` / ``h = block(h)``), which
    is renamed as one variable (``x = x`` then dropped)."""
    parsed = [_parse(line) for line in lines]
    spans: dict[str, list[int]] = {a: [-1, -1] for a in args}  # name -> [first assignment, last read]
    pinned = set(args)
    loops = _accumulators(parsed)
    for i, p in enumerate(parsed):
        for name, _, _ in p.defs:
            if (name, i) in loops:
                continue  # the accumulator's update: part of its assignment above the loop
            if (name in spans and name not in args) or p.loop:
                pinned.add(name)
            spans.setdefault(name, [i, i])
    others = set()
    for i, p in enumerate(parsed):
        for name, _, _ in p.uses:
            if name in spans:
                spans[name][1] = max(spans[name][1], i)
            else:
                others.add(name)
    holders: dict[str, list[tuple[int, int]]] = {n: [tuple(s)] for n, s in spans.items()}
    final: dict[str, str] = {}
    for v in sorted(wanted, key=lambda n: spans.get(n, [0])[0]):
        want = wanted[v]
        if v not in spans or v in pinned or want == v or not is_free(want, reserved | others):
            continue
        d, u = spans[v]
        if all((u2 <= d and d2 < d) or (u <= d2 and d < d2) for d2, u2 in holders.get(want, [])):
            holders[v].remove((d, u))
            holders.setdefault(want, []).append((d, u))
            final[v] = want
    renamed = [_apply(p, final) for p in parsed]
    return [line for line in renamed if not re.fullmatch(r"(\w+) = \1", line)]


def _accumulators(parsed: list[_Line]) -> set[tuple[str, int]]:
    """``(name, line)`` of each loop body's update ``h = block(h)`` of a variable assigned just
    above its ``for`` (``h = x``) and nowhere else."""
    out = set()
    for i in range(len(parsed) - 2):
        first, head, body = parsed[i : i + 3]
        names = [n for n, _, _ in first.defs]
        if len(names) == 1 and not first.loop and head.text.startswith("for ") and body.indent:
            if [n for n, _, _ in body.defs] == names:
                out.add((names[0], i + 2))
    counts: dict[str, int] = {}
    for p in parsed:
        for n, _, _ in p.defs:
            counts[n] = counts.get(n, 0) + 1
    return {(n, i) for n, i in out if counts[n] == 2}


def is_free(name: str, taken: set[str]) -> bool:
    """``name`` can name a variable: an identifier, no keyword or builtin, not ``taken``."""
    ok = _IDENT.match(name) and not keyword.iskeyword(name) and name not in _BUILTINS
    return bool(ok) and name not in taken and name != "_"


def _apply(p: _Line, final: dict[str, str], values: dict[str, str] | None = None) -> str:
    """The line with variables renamed (``final``) and reads replaced by expressions (``values``)."""
    text, values = p.text, values or {}
    spans = [(n, a, b, final) for n, a, b in p.defs] + [(n, a, b, {**final, **values}) for n, a, b in p.uses]
    for name, start, end, table in sorted(spans, key=lambda s: -s[1]):
        if name in table:
            text = text[:start] + table[name] + text[end:]
    return p.indent + text


def assigned(lines: list[str]) -> set[str]:
    """The names ``lines`` assign outside ``for`` headers."""
    return {n for p in map(_parse, lines) if not p.text.startswith("for ") for n, _, _ in p.defs}


def mentions(line: str, name: str) -> bool:
    """``line`` reads or assigns the variable ``name`` (not an attribute or a word in a string)."""
    p = _parse(line)
    return any(n == name for n, _, _ in p.defs + p.uses)


def inline_return(lines: list[str]) -> list[str]:
    """``y = expr`` / ``return y`` as ``return expr`` (``y`` a single name, outside a loop)."""
    if len(lines) < 2 or not lines[-1].startswith("return "):
        return lines
    name = lines[-1][len("return ") :]
    head, sep, expr = lines[-2].partition(" = ")
    if not sep or head != name or not _IDENT.match(name) or lines[-2].startswith(" "):
        return lines
    return [*lines[:-2], f"return {expr}"]
