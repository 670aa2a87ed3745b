"""``parity convert`` and the converter on bad input: one line on stderr, exit 1, nothing written,
no code run, never advice to load with ``weights_only=False``."""

import io
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from parity import convert
from parity.cli import main
from torch_impl.models import build_model


class _RunsCode:
    """Unpickling this calls ``open(marker, 'w')``: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _good_bytes() -> bytes:
    return _torch_bytes(build_model("signal1d", seed=0).state_dict())


def _convert(tmp_path, capsys, src_bytes: bytes, suffix=".pt", dst="out.msgpack"):
    src = tmp_path / f"in{suffix}"
    src.write_bytes(src_bytes)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["convert", "--model", "signal1d", str(src), str(tmp_path / dst)])
    err = capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp file
    return code, err


def _assert_one_clean_line(err: str):
    assert err.count("\n") == 1 and err.startswith("parity convert: ")
    assert "Traceback" not in err and "weights_only=False" not in err
    assert "weights_only` set to `False" not in err


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("empty", b"", "empty"),
        ("truncated", _good_bytes()[:300], "truncated or corrupt"),
        ("random", np.random.default_rng(0).bytes(400), "not a plain tensor state_dict|truncated or corrupt"),
        ("raw pickle", pickle.dumps({"w": 1.0}) + b"", "not a plain tensor|truncated or corrupt|holds a"),
    ],
)
def test_unreadable_pt_is_one_line_exit_1(tmp_path, capsys, name, data, expected):
    code, err = _convert(tmp_path, capsys, data)
    assert code == 1, name
    _assert_one_clean_line(err)
    assert __import__("re").search(expected, err), err


def test_malicious_pickle_is_refused_and_never_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    data = _torch_bytes({"conv1.weight": _RunsCode(str(marker))})
    code, err = _convert(tmp_path, capsys, data)
    assert code == 1 and not marker.exists()
    _assert_one_clean_line(err)
    assert "refused" in err and "GLOBAL io.open" in err
    # a plain pickle stream (not torch's zip format) is refused just the same
    code, err = _convert(tmp_path, capsys, pickle.dumps(_RunsCode(str(marker))))
    assert code == 1 and not marker.exists()
    _assert_one_clean_line(err)


@pytest.mark.parametrize("data", [b"\x81\xa1a", b"\x01\x02\x03", np.random.default_rng(1).bytes(64), b""])
def test_malformed_msgpack_is_one_line_exit_1(tmp_path, capsys, data):
    code, err = _convert(tmp_path, capsys, data, suffix=".msgpack", dst="out.pt")
    assert code == 1
    _assert_one_clean_line(err)
    assert "in.msgpack" in err


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda sd: {i: t for i, t in enumerate(sd.values())}, r"key 0 is a int, not a string"),
        (
            lambda sd: {**sd, "conv1.weight": sd["conv1.weight"].to_sparse()},
            r"conv1\.weight: torch\.sparse_coo",
        ),
        (lambda sd: {"state_dict": {**sd, "fc2.bias": torch.empty(10, device="meta")}}, r"fc2\.bias: a meta"),
        (lambda sd: {**sd, "fc2.bias": "text"}, r"fc2\.bias: holds a str"),
    ],
    ids=["int-keyed", "sparse", "meta", "not-a-tensor"],
)
def test_odd_state_dicts_are_named(tmp_path, capsys, make, expected):
    sd = build_model("signal1d", seed=0).state_dict()
    code, err = _convert(tmp_path, capsys, _torch_bytes(make(sd)))
    assert code == 1
    _assert_one_clean_line(err)
    assert __import__("re").search(expected, err), err


def test_state_dict_wrapper_is_accepted(tmp_path, capsys):
    sd = build_model("signal1d", seed=0).state_dict()
    src = tmp_path / "ckpt.pth"
    torch.save({"state_dict": sd, "epoch": 3}, src)
    assert main(["convert", "--model", "signal1d", str(src), str(tmp_path / "m.msgpack")]) == 0


@pytest.mark.parametrize("dst", ["missing_dir/out.msgpack", "a_directory"])
def test_unwritable_destination_names_dst_not_the_temp_file(tmp_path, capsys, dst):
    (tmp_path / "a_directory").mkdir()
    src = tmp_path / "m.pt"
    src.write_bytes(_good_bytes())
    target = tmp_path / dst
    if dst == "a_directory":
        target = tmp_path / "a_directory"
        os.rename(target, tmp_path / "a_directory.msgpack")
        target = tmp_path / "a_directory.msgpack"
    code = main(["convert", "--model", "signal1d", str(src), str(target)])
    err = capsys.readouterr().err
    assert code == 1
    _assert_one_clean_line(err)
    assert f"{target}: cannot write" in err and ".tmp" not in err


def test_usage_errors_exit_2(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["convert", "--model", "signal1d", str(tmp_path / "only_src.pt")])
    assert e.value.code == 2


class _WithMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("mask", torch.ones(3))

    def forward(self, x):
        return self.fc(x) * self.mask


def test_unknown_buffer_is_refused_by_name_not_dropped():
    m = _WithMask()
    with pytest.raises(
        convert.ConversionError, match=r"no conversion rule for '' \(_WithMask\), which holds mask"
    ):
        convert.torch_to_linen(m.state_dict(), m)


class _Norms(nn.Module):
    def __init__(self, **bn):
        super().__init__()
        self.fc = nn.Linear(4, 3, bias=False)
        self.bn = nn.BatchNorm1d(3, **bn)

    def forward(self, x):
        return self.bn(self.fc(x))


def test_bn_affine_false_round_trips_through_the_template_api():
    m = _Norms(affine=False)
    m.bn.running_mean.normal_()
    v = convert.torch_to_linen(m.state_dict(), m)
    assert set(v["params"]["bn"]) == set() if "bn" in v["params"] else True
    assert set(v["batch_stats"]["bn"]) == {"mean", "var"}
    back = convert.linen_to_torch(v, m)
    assert all(torch.equal(back[k], m.state_dict()[k]) for k in back)


def test_bn_without_running_stats_is_refused_by_name_in_the_template_api():
    m = _Norms(track_running_stats=False)
    with pytest.raises(convert.ConversionError, match=r"'bn' \(BatchNorm1d, track_running_stats=False\)"):
        convert.torch_to_linen(m.state_dict(), m)


def test_corrupt_safetensors_is_one_line_exit_1(tmp_path, capsys):
    code, err = _convert(tmp_path, capsys, np.random.default_rng(2).bytes(100), suffix=".safetensors")
    assert code == 1
    _assert_one_clean_line(err)
    assert "not a readable safetensors file" in err


def test_msgpack_holding_non_arrays_is_named(tmp_path, capsys):
    from flax import serialization

    data = serialization.msgpack_serialize({"params": {"fc1": {"kernel": "text"}}})
    code, err = _convert(tmp_path, capsys, data, suffix=".msgpack", dst="out.pt")
    assert code == 1
    _assert_one_clean_line(err)
    assert "params/fc1/kernel: holds a str, not an array" in err


def test_model_shortcut_reads_and_writes_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    sd = build_model("signal1d", seed=0).state_dict()
    save_file(dict(sd), tmp_path / "m.safetensors")
    assert (
        main(["convert", "--model", "signal1d", str(tmp_path / "m.safetensors"), str(tmp_path / "m.msgpack")])
        == 0
    )
    assert (
        main(["convert", "--model", "signal1d", str(tmp_path / "m.msgpack"), str(tmp_path / "b.safetensors")])
        == 0
    )
    back = load_file(tmp_path / "b.safetensors")
    assert all(torch.equal(back[k], sd[k]) for k in sd if "num_batches" not in k)
