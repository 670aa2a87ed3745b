"""``parity port --torch SPEC --input-shape ... --to nnx|linen --out DIR``: write the Flax port.

Generates the port's source (:func:`parity.port.build_port`), converts the torch weights into
it and writes ``DIR`` atomically (:func:`parity.port.output.staged_folder`): ``model.py``,
``weights.msgpack``, ``weights.safetensors`` and ``train_step.py`` (the mode pattern of the
style). Then it runs ``parity check --localize`` of ``DIR/model.py:make`` against the torch
model in-process, on the very pair whose weights were written, and prints the verdict.

Exit 0: the port passes the check. 1: the check fails, or the port has stubs (each listed, left
to write by hand; the partial port is written, the check not run). 2: usage, a SPEC that does
not load, an existing non-empty ``DIR`` without ``--force`` (one line; nothing written).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from parity.device import DEVICES

STYLES = ("nnx", "linen")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``parity port``."""
    from parity.commands.map import add_input_arguments

    parser.add_argument(
        "--torch", metavar="SPEC", required=True, help="package.module:factory or file.py:factory"
    )
    add_input_arguments(parser, "example input, torch layout", required=True)
    parser.add_argument(
        "--to", choices=STYLES, default="nnx", help="the Flax style of the port (default nnx)"
    )
    parser.add_argument(
        "--out", metavar="DIR", required=True, help="the folder to write (created atomically)"
    )
    parser.add_argument("--force", action="store_true", help="replace DIR when it exists and is not empty")
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="where the check runs (default: auto)"
    )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _inputs(args: argparse.Namespace) -> tuple[Any, tuple]:
    """``(SpecInput of --input-shape, ((name, SpecInput), ...) of --input)``, channels-last."""
    from parity.harness.specs import SpecInput

    extra = [
        (name or "", SpecInput(shape, dtype, high)) for name, (shape, dtype, high) in args.extra_inputs or ()
    ]
    return SpecInput(args.input_shape, args.input_dtype, args.input_high), tuple(extra)


def _example(torch_model: Any, inp: Any, extra: tuple) -> tuple[Any, dict]:
    """The example inputs of :func:`parity.port.build_port`, torch tensors drawn from seed 0:
    the positional ones (a tensor, or a tuple) and the keyword ones (``--input NAME=...``)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    dtype = next(iter(torch_model.parameters()), torch.zeros(())).dtype
    tensors, keywords = [], {}
    for name, spec in (("", inp), *extra):
        t = torch.from_numpy(spec.sample(rng))
        t = t.to(dtype) if t.is_floating_point() else t
        if name:
            keywords[name] = t
        else:
            tensors.append(t)
    return (tensors[0] if len(tensors) == 1 else tuple(tensors)), keywords


def _with_layout(inp: Any, extra: tuple, channels_last: bool) -> tuple[Any, tuple]:
    inp = dataclasses.replace(inp, channels_last=channels_last)
    return inp, tuple((n, dataclasses.replace(e, channels_last=channels_last)) for n, e in extra)


def run(args: argparse.Namespace) -> int:
    """Generate, write and check the port; 0 when it passes, 1 when it fails or has stubs."""
    from parity.device import configure
    from parity.port import build_port
    from parity.port.output import check_out_dir, write_port
    from parity.spec import build

    out = Path(args.out)
    check_out_dir(out, args.force)  # before any work: an existing folder is refused at once
    configure(args.device, "strict")  # a missing device too (DeviceError), not after the writing
    inp, extra = _inputs(args)
    torch_model, _ = build(args.torch, ("torch",))
    _log(f"# generating the {args.to} port of {args.torch}")
    example, keywords = _example(torch_model, inp, extra)
    port = build_port(torch_model, example, style=args.to, example_kwargs=keywords)
    inp, extra = _with_layout(inp, extra, port.channels_last)
    written = write_port(port, args.torch, out, args.force, inp, extra, _log)
    print(f"wrote {out}/: {', '.join(written.files)}")
    for note in port.notes:
        print(f"note: {note}")
    if port.stubs:
        return _report_stubs(port, written.problem)
    if written.problem is not None:
        print(f"FAIL: the port's weights do not convert: {written.problem}")
        return 1
    return _check(written.models, args)


def _report_stubs(port: Any, problem: str | None) -> int:
    """List each stub (op, where, message) and say the check was not run; exit code 1."""
    print(f"\nleft to write by hand ({len(port.stubs)} stub(s) raising NotImplementedError):")
    for s in port.stubs:
        message = s.message.removeprefix(f"{s.op} at {s.where}: ")
        print(f"  {s.op} at {s.where}: {message}")
    if problem is not None:  # the stub raises when the port runs: the conversion needs a run
        print("\nthe weights and train_step.py are written once the stubs are (the port cannot run yet)")
    print("\nFAIL: the port is partial; parity check runs once the stubs are written")
    return 1


def _check(models: Any, args: argparse.Namespace) -> int:
    """``parity check --localize`` of the written port against the torch SPEC (the check
    command's own path); 0 when it passes."""
    from parity.commands.check import run_spec_check
    from parity.harness.suite import CheckConfig

    config = CheckConfig(localize=True, device=args.device)
    _log(f"# parity check --torch {args.torch} --flax {models.flax} --localize")
    result = run_spec_check(config, models, _log)
    flax = models.flax
    if result.passed:
        print(f"port verified: {flax} matches {args.torch} (parity check --localize)")
    else:
        print(f"port NOT verified: {flax} differs from {args.torch}; see the rows above")
    return 0 if result.passed else 1
