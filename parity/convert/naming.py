"""Pairing torch module names with Flax module paths, with no configuration for the usual
conventions and a user map for the rest.

A torch name's digit segments (``blocks.0.conv``: an ``nn.ModuleList``/``nn.Sequential`` index)
are spelled in Flax as one of

* Linen list attribute ``blocks_0/conv``;
* Linen ``nn.Sequential`` ``blocks/layers_0/conv``;
* NNX list / ``nnx.List`` ``blocks/0/conv``;
* NNX ``nnx.Sequential`` ``blocks/layers/0/conv``;
* a Linen module named after the torch key, ``name=f"blocks.{i}"`` (scenic's CLIP),
  ``blocks.0/conv``.

Every spelling is tried against the Flax model's own module paths; the one that exists wins.
None existing leaves the module unmatched; two existing is an ambiguity error. Nothing is ever
paired by position.

A **user map** is a callable ``torch module name -> Flax module path or None``, or a text file
of rules, one per line, ``REGEX -> REPLACEMENT`` (``re.fullmatch`` on the torch module name, or
on the full key of a parameter that is not inside a layer; ``\\1`` groups allowed; ``#``
starts a comment). A result with ``/`` is a Flax path as it is; a result with dots is a torch-style
name, spelled in Flax by the conventions above; several results separated by commas pair one
torch module with several Flax modules (its tensors are copied to each)::

    # torch name              -> Flax path
    backbone\\.stem\\.(\\d+)     -> stem/conv_\\1
    head                      -> classifier
    transformer\\.(.*)         -> \\1            # strip a prefix
    cls                       -> cls_token      # rename a bare parameter
    block\\.norm               -> block/norm_a, block/norm_b

A module with no rule of its own and no path by the conventions is looked for below the nearest
ancestor a rule moved (``stages\\.(\\d)\\.(\\d+) -> stages\\1\\2`` puts ``stages.0.0.dwconv`` at
``stages00/dwconv``). A rule that matches no torch name is reported (:meth:`RuleMap.unused`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from parity.convert.common import ConversionError

UserMap = Callable[[str], "str | None"]


def flax_spellings(torch_name: str) -> list[str]:
    """Every Flax module path the torch module ``torch_name`` may have (``''`` for the root)."""
    paths: list[list[str]] = [[]]
    for seg in torch_name.split(".") if torch_name else []:
        if not seg.isdigit():
            paths = [p + [seg] for p in paths]
            continue
        grown = []
        for p in paths:
            if p:
                grown.append(p[:-1] + [f"{p[-1]}_{seg}"])
            grown += [p + [f"layers_{seg}"], p + [seg], p + ["layers", seg]]
            if p:  # a Linen module named after the torch key: name=f"resblocks.{i}"
                grown.append(p[:-1] + [f"{p[-1]}.{seg}"])
        paths = grown
    return ["/".join(p) for p in paths]


def module_paths(leaf_paths: Iterable[str]) -> set[str]:
    """Every module path (``''`` included) above the flat Flax leaves ``col/a/b/leaf``."""
    out = {""}
    for path in leaf_paths:
        parts = path.split("/")[1:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


def _spelled(result: str, candidates: set[str]) -> str | None:
    """A map result as a Flax path: ``/`` paths as they are, dotted names spelled."""
    result = result.strip().strip("/")
    if "/" in result or "." not in result:
        return result
    found = [p for p in dict.fromkeys(flax_spellings(result)) if p in candidates]
    if len(found) > 1:
        raise ConversionError(f"map result {result!r}: ambiguous, the Flax model has {' and '.join(found)}")
    return found[0] if found else result.replace(".", "/")


def resolve_path(
    torch_name: str, flax_modules: set[str], user_map: UserMap | None, leaf: bool = False
) -> tuple[str, ...] | None:
    """The Flax path(s) of torch module ``torch_name`` (several when a map rule names several),
    or ``None``. ``leaf``: ``torch_name`` is a parameter key and only the user map is asked."""
    if user_map is not None:
        mapped = user_map(torch_name)
        if mapped is not None:
            return tuple(_spelled(part, flax_modules) for part in mapped.split(","))
    if leaf:
        return None
    found = find_flax_path(torch_name, flax_modules, None)
    if found is None and user_map is not None:
        found = below_mapped_parent(torch_name, flax_modules, user_map)
    return None if found is None else (found,)


def below_mapped_parent(torch_name: str, flax_modules: set[str], user_map: UserMap) -> str | None:
    """A module with no rule and no path of its own, below the nearest ancestor a rule moves
    (``stages\\.(\\d)\\.(\\d+) -> stages\\1\\2`` puts ``stages.0.0.dwconv`` at ``stages00/dwconv``):
    its usual spellings under the ancestor's Flax path, when exactly one exists."""
    parts = torch_name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        mapped = user_map(".".join(parts[:i]))
        if mapped is None:
            continue
        if "," in mapped:  # one torch module copied to several Flax modules: no subtree
            return None
        base = _spelled(mapped, flax_modules)
        found = [f"{base}/{s}".strip("/") for s in flax_spellings(".".join(parts[i:]))]
        found = [f for f in dict.fromkeys(found) if f in flax_modules]
        return found[0] if len(found) == 1 else None
    return None


def find_flax_path(torch_name: str, flax_modules: set[str], user_map: UserMap | None) -> str | None:
    """The Flax module path of torch module ``torch_name``, or ``None`` when it has none."""
    if user_map is not None:
        mapped = user_map(torch_name)
        if mapped is not None:
            return _spelled(mapped.split(",")[0], flax_modules)
    found = [p for p in dict.fromkeys(flax_spellings(torch_name)) if p in flax_modules]
    if len(found) > 1:
        raise ConversionError(
            f"{torch_name or '(root)'}: ambiguous, the Flax model has {' and '.join(found)}; "
            "add a --map rule for it"
        )
    if not found and user_map is not None and torch_name:
        return below_mapped_parent(torch_name, flax_modules, user_map)
    return found[0] if found else None


def load_user_map(source: str | Path | UserMap | None) -> UserMap | None:
    """A user map from a callable, a rules file path (a :class:`RuleMap`), or ``None``."""
    if source is None or callable(source):
        return source
    path = Path(source)
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except OSError as e:
        raise ConversionError(f"{path}: cannot read the map file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConversionError(
            f"{path}: the map file is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"
        ) from None
    rules = []
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "->" not in line:
            raise ConversionError(f"{path}:{n}: expected 'REGEX -> REPLACEMENT', got {line!r}")
        pattern, repl = (s.strip() for s in line.split("->", 1))
        try:
            rules.append((re.compile(pattern), repl, f"{path}:{n}"))
        except re.error as e:
            raise ConversionError(f"{path}:{n}: bad regex {pattern!r}: {e}") from None
    return RuleMap(rules)


class RuleMap:
    """The rules of a map file as a user map; remembers which rules matched a name."""

    def __init__(self, rules: list[tuple[re.Pattern, str, str]]) -> None:
        self.rules = rules
        self.used: set[int] = set()

    def __call__(self, name: str) -> str | None:
        for i, (pattern, repl, _) in enumerate(self.rules):
            if pattern.fullmatch(name):
                self.used.add(i)
                return pattern.sub(repl, name, count=1)
        return None

    def unused(self) -> list[str]:
        """One line per rule that matched no name so far (``FILE:LINE: 'REGEX -> REPL'``)."""
        return [
            f"{where}: map rule '{p.pattern} -> {r}' matches no torch module or parameter"
            for i, (p, r, where) in enumerate(self.rules)
            if i not in self.used
        ]
