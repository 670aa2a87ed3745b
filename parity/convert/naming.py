"""Pairing torch module names with Flax module paths, with no configuration for the usual
conventions and a user map for the rest.

A torch name's digit segments (``blocks.0.conv``: an ``nn.ModuleList``/``nn.Sequential`` index)
are spelled in Flax as one of

* Linen list attribute ``blocks_0/conv``;
* Linen ``nn.Sequential`` ``blocks/layers_0/conv``;
* NNX list / ``nnx.List`` ``blocks/0/conv``;
* NNX ``nnx.Sequential`` ``blocks/layers/0/conv``.

Every spelling is tried against the Flax model's own module paths; the one that exists wins.
None existing leaves the module unmatched; two existing is an ambiguity error. Nothing is ever
paired by position.

A **user map** is a callable ``torch module name -> Flax module path or None``, or a text file
of rules, one per line, ``REGEX -> REPLACEMENT`` (``re.fullmatch`` on the torch module name,
``\\1`` groups allowed; the result is a ``/``-joined Flax path; ``#`` starts a comment)::

    # torch name              -> Flax path
    backbone\\.stem\\.(\\d+)     -> stem/conv_\\1
    head                      -> classifier
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


def find_flax_path(torch_name: str, flax_modules: set[str], user_map: UserMap | None) -> str | None:
    """The Flax module path of torch module ``torch_name``, or ``None`` when it has none."""
    if user_map is not None:
        mapped = user_map(torch_name)
        if mapped is not None:
            return mapped.strip("/")
    found = [p for p in dict.fromkeys(flax_spellings(torch_name)) if p in flax_modules]
    if len(found) > 1:
        raise ConversionError(
            f"{torch_name or '(root)'}: ambiguous, the Flax model has {' and '.join(found)}; "
            "add a --map rule for it"
        )
    return found[0] if found else None


def load_user_map(source: str | Path | UserMap | None) -> UserMap | None:
    """A user map from a callable, a rules file path, or ``None``."""
    if source is None or callable(source):
        return source
    path = Path(source)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConversionError(f"{path}: cannot read the map file: {e.strerror or e}") from None
    rules = []
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "->" not in line:
            raise ConversionError(f"{path}:{n}: expected 'REGEX -> REPLACEMENT', got {line!r}")
        pattern, repl = (s.strip() for s in line.split("->", 1))
        try:
            rules.append((re.compile(pattern), repl))
        except re.error as e:
            raise ConversionError(f"{path}:{n}: bad regex {pattern!r}: {e}") from None
    return _rules_map(rules)


def _rules_map(rules: list[tuple[re.Pattern, str]]) -> UserMap:
    def mapped(name: str) -> str | None:
        for pattern, repl in rules:
            if pattern.fullmatch(name):
                return pattern.sub(repl, name, count=1)
        return None

    return mapped
