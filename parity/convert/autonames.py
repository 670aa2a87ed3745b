"""Linen auto-names (``ResNetBlock_0`` ... ``ResNetBlock_7``, ``Conv_0``, ``Dense_0``) paired with
torch modules by order.

Linen names an unnamed submodule ``<Class>_<k>``, ``k`` counting the modules of that class created
(called) in the same parent. A regex cannot compute such an index, so the converter pairs
them itself: inside each pair of already paired modules (the roots first), the torch modules
that pair by no name, reached through containers (``Sequential``, ``ModuleList``) that the
port does not have, are grouped by class, in registration order (which is call order in the
usual ``__init__``/``forward``); the auto-named Flax children are grouped by class, in index
order. Groups pair when their classes correspond (the same name, or ``Conv2d``/``Conv``,
``Linear``/``Dense``, ... below) and their sizes are equal, or, for the user's own classes
(``BasicBlock``/``ResNetBlock``), when exactly one unpaired group on each side has that size.
Nothing is paired when the counts differ. Inside an auto-named module, a map rule may match the
name relative to it (``downsample\\.0 -> conv_proj``): the one place a rule can reach below a
computed index.
"""

from __future__ import annotations

import re
from collections import defaultdict

from torch import nn

from parity.convert.common import ConversionError
from parity.convert.naming import UserMap, find_flax_path, flax_spellings, resolve_path
from parity.convert.rules import rule_for

_AUTO = re.compile(r"([A-Z]\w*?)_(\d+)")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_LINEN_CLASSES = {
    "Linear": ("Dense", "DenseGeneral"),
    "Conv1d": ("Conv",),
    "Conv2d": ("Conv",),
    "Conv3d": ("Conv",),
    "ConvTranspose1d": ("ConvTranspose",),
    "ConvTranspose2d": ("ConvTranspose",),
    "ConvTranspose3d": ("ConvTranspose",),
    "BatchNorm1d": ("BatchNorm",),
    "BatchNorm2d": ("BatchNorm",),
    "BatchNorm3d": ("BatchNorm",),
    "LayerNorm": ("LayerNorm",),
    "GroupNorm": ("GroupNorm",),
    "RMSNorm": ("RMSNorm",),
    "Embedding": ("Embed",),
    "MultiheadAttention": ("MultiHeadDotProductAttention", "MultiHeadAttention", "SelfAttention"),
}


def module_pairs(model: nn.Module, flax_modules: set[str], user_map: UserMap | None = None) -> dict[str, str]:
    """``{torch module name: Flax module path}`` for every torch module that pairs with one of
    ``flax_modules`` (``/``-joined paths, e.g. the modules a Flax forward pass called): by the
    user map, the naming conventions, or Linen auto-name order (stateless modules such as
    ``Dropout`` included). What the harness needs to hook the same layer on both sides."""
    out = auto_name_paths(model, flax_modules, user_map, stateless=True)
    pairs = {}
    for name, _ in model.named_modules():
        try:
            found = resolve_path(name, flax_modules, user_map) or out.get(name)
        except ConversionError:
            found = None
        if found and found[0] in flax_modules:
            pairs[name] = found[0]
    return pairs


def _children(flax_modules: set[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for path in flax_modules:
        if path:
            parent, _, child = path.rpartition("/")
            out[parent].append(child)
    return out


def _stateful(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _frontier(
    module: nn.Module, name: str, resolve, stateless: bool = False, open_subclasses: bool = True
) -> tuple[list, list]:
    """``(resolved, pending)`` stateful (or all, ``stateless``) descendants of ``module`` reached
    through unresolved containers: ``[(name, module, flax path)]`` and ``[(name, module)]``.
    ``open_subclasses=False``: a user's class derived from a container (torchvision's
    ``MLPBlock(MLP(nn.Sequential))``) is one pending module, not looked through."""
    resolved, pending = [], []
    for child_name, child in module.named_children():
        full = f"{name}.{child_name}" if name else child_name
        if not (stateless or _stateful(child)):
            continue
        path = resolve(full)
        if path is not None:
            resolved.append((full, child, path))
        elif isinstance(child, _CONTAINERS) and (open_subclasses or type(child) in _CONTAINERS):
            more = _frontier(child, full, resolve, stateless, open_subclasses)
            resolved += more[0]
            pending += more[1]
        else:
            pending.append((full, child))
    return resolved, pending


def _flax_groups(children: list[str], taken: set[str]) -> dict[str, list[str]]:
    """Auto-named children by class, in index order; classes whose indices are not 0..n-1 are left out."""
    groups: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for c in children:
        m = _AUTO.fullmatch(c)
        if m and c not in taken:
            groups[m.group(1)].append((int(m.group(2)), c))
    return {
        k: [c for _, c in sorted(v)]
        for k, v in groups.items()
        if sorted(i for i, _ in v) == list(range(len(v)))
    }


def _pair_groups(torch_groups: dict[str, list], flax_groups: dict[str, list[str]]) -> list[tuple[str, str]]:
    """``[(torch class, Flax class)]``: by corresponding class names, then by unique sizes."""
    pairs, free_t, free_f = [], dict(torch_groups), dict(flax_groups)
    for t, members in torch_groups.items():
        names = dict.fromkeys((t, *_LINEN_CLASSES.get(t, ())))
        names.update(dict.fromkeys(f for f in free_f if f.lower() == t.lower()))  # MLPBlock/MlpBlock
        named = [f for f in names if len(free_f.get(f, ())) == len(members)]
        if len(named) == 1:
            pairs.append((t, named[0]))
            free_t.pop(t)
            free_f.pop(named[0])
    # torch's own layers (MaxPool2d, ReLU) pair by class name only: a port often has no module
    own_t = {t: ms for t, ms in free_t.items() if not type(ms[0][1]).__module__.startswith("torch.nn.")}
    for t, members in list(own_t.items()):
        same_f = [f for f, fs in free_f.items() if len(fs) == len(members)]
        same_t = [u for u, us in own_t.items() if len(us) == len(members)]
        if len(same_f) == 1 and len(same_t) == 1:
            pairs.append((t, same_f[0]))
            free_f.pop(same_f[0])
    return pairs


def auto_name_paths(
    model: nn.Module, flax_modules: set[str], user_map: UserMap | None, stateless: bool = False
) -> dict[str, tuple[str]]:
    """``{torch module name: (Flax path,)}`` for the torch modules that pair only through Linen
    auto-names (and those below them, by the usual spellings); ``{}`` when the Flax model has none.
    ``stateless``: modules without tensors take part too (``Dropout`` <-> ``Dropout_0``)."""
    children = _children(flax_modules)
    if not any(_AUTO.fullmatch(c) for cs in children.values() for c in cs):
        return {}
    out: dict[str, tuple[str]] = {}
    queue = [("", model, "")]
    while queue:
        tname, tmod, fpath = queue.pop(0)

        def resolve(full: str, tname=tname, fpath=fpath) -> str | None:
            found = find_flax_path(full, flax_modules, user_map)
            if found is not None:
                return found
            rel = full[len(tname) + 1 :] if tname else full
            mapped = user_map(rel) if user_map is not None and tname else None
            if mapped and f"{fpath}/{mapped.strip('/')}" in flax_modules:  # a rule on the relative name
                return f"{fpath}/{mapped.strip('/')}"
            found = [f"{fpath}/{s}".strip("/") for s in flax_spellings(rel)]
            found = [f for f in dict.fromkeys(found) if f in flax_modules]
            return found[0] if len(found) == 1 else None

        resolved = _pair_children((tmod, tname, fpath), resolve, flax_modules, stateless, out)
        queue += [(full, child, path) for full, child, path in resolved if rule_for(child) is None]
    return out


def _pair_children(node: tuple, resolve, flax_modules: set[str], stateless: bool, out: dict) -> list:
    """Pair the unresolved torch descendants of ``tmod`` with the auto-named Flax children of
    ``fpath`` (into ``out``); the resolved ``[(name, module, flax path)]``. A user's container
    subclass is first tried as one module (``mlp`` <-> ``MlpBlock_0``), and looked through
    (as plain containers are) when that pairs it with nothing."""
    tmod, tname, fpath = node
    children = _children(flax_modules)
    for open_subclasses in (False, True):
        resolved, pending = _frontier(tmod, tname, resolve, stateless, open_subclasses)
        torch_groups: dict[str, list] = defaultdict(list)
        for full, child in pending:
            torch_groups[type(child).__name__].append((full, child))
        taken = {p.rpartition("/")[2] for _, _, p in resolved if p.rpartition("/")[0] == fpath}
        flax_groups = _flax_groups(children.get(fpath, []), taken)
        pairs = _pair_groups(torch_groups, flax_groups)
        closed = [c for _, c in pending if isinstance(c, _CONTAINERS)]
        if not closed or {t for t, _ in pairs} >= {type(c).__name__ for c in closed}:
            break
    for full, _child, path in resolved:
        if path != find_flax_path(full, flax_modules, None) and full not in out:
            out[full] = (path,)
    for t, f in pairs:
        for (full, child), name in zip(torch_groups[t], flax_groups[f], strict=True):
            out[full] = (f"{fpath}/{name}".strip("/"),)
            resolved.append((full, child, out[full][0]))
    return resolved
