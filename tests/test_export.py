"""Export and load: round trips in every format, sparse Linear layers, clear errors.

An export directory is written once per reference model (module fixture, every format) and
read back by the round-trip tests; the error tests break a small LeNet-300-100 export in one
way each.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from learnprune.compact import compact
from learnprune.errors import CheckpointError, ConfigError, LearnpruneError, UnsupportedModelError
from learnprune.export import FILES, export, load, load_masks, read_metadata
from learnprune.models import build_model
from learnprune.sparse_linear import (
    SparseLinear,
    dense_size_bytes,
    densify,
    sparse_size_bytes,
    sparsify,
)

MODELS = ["lenet300", "lenet5-caffe", "resnet20"]
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
# the module, not the function (a package may re-export the function under this name)
export_module = importlib.import_module("learnprune.export")


pytestmark = pytest.mark.usefixtures("one_thread")


def pruned_model(name: str, sparsity: float = 0.5, seed: int = 0) -> nn.Module:
    """A reference model with random zeros in every weight and non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = build_model(name)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.weight.mul_(torch.rand_like(module.weight) >= sparsity)
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def batch(model: nn.Module, n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *model.input_shape, generator=torch.Generator().manual_seed(seed))


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """Bit-identical state_dicts: same keys in the same order, dtypes and values."""
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for key, tensor in state_a.items():
        assert state_b[key].dtype == tensor.dtype, key
        assert torch.equal(state_b[key], tensor), key


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    """Every reference model exported in every format (ONNX where onnxruntime exists)."""
    formats = ["safetensors", "csr", "bsr"] + (["onnx"] if HAS_ORT else [])
    out = {}
    for name in MODELS:
        model = pruned_model(name)
        path = export(
            model,
            tmp_path_factory.mktemp("export") / name,
            model_name=name,
            model_options={"num_classes": 10},
            formats=formats,
        )
        out[name] = (model, path)
    return out


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_safetensors_round_trip_is_bit_identical(exported, name: str) -> None:
    model, path = exported[name]
    loaded = load(path)
    assert not loaded.training
    assert_same_state(model, loaded)
    x = batch(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.input_shape == model.input_shape


@pytest.mark.parametrize("fmt", ["csr", "bsr"])
@pytest.mark.parametrize("name", MODELS)
def test_sparse_round_trip(exported, name: str, fmt: str) -> None:
    model, path = exported[name]
    loaded = load(path, format=fmt)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    sparse = {n: m for n, m in loaded.named_modules() if isinstance(m, SparseLinear)}
    assert sorted(sparse) == sorted(linears)
    for layer in sparse.values():
        assert layer.format == fmt
        assert layer.crow_indices.dtype == layer.col_indices.dtype == torch.int32
    assert_same_state(model, densify(loaded))
    x = batch(model)
    with torch.no_grad():
        # same sparse kernels as converting in memory, and the dense result up to rounding
        assert torch.equal(loaded(x), sparsify(model, fmt)(x))
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_onnx_round_trip(exported, name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, path = exported[name]
    record = read_metadata(path)["onnx"]
    assert record["opset"] >= 17 and record["dynamic_batch"]
    session = ort.InferenceSession(str(path / FILES["onnx"]), providers=["CPUExecutionProvider"])
    x = batch(model, n=5)
    (got,) = session.run(None, {record["input_name"]: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-4)


def test_json_describes_the_export(exported) -> None:
    model, path = exported["lenet300"]
    meta = json.loads((path / "model.json").read_text())
    assert meta["format"] == "learnprune-export" and meta["format_version"] == 1
    assert meta["architecture"]["model_name"] == "lenet300"
    assert meta["architecture"]["layers"]["fc1"] == {
        "type": "Linear",
        "in_features": 784,
        "out_features": 300,
        "bias": True,
    }
    assert meta["architecture"]["resized_layers"] == 0
    fc1 = meta["sparse"]["csr"]["layers"]["fc1"]
    assert fc1["nonzero"] == int(torch.count_nonzero(model.fc1.weight))
    assert meta["sparse"]["bsr"]["block"] == 8
    for name, record in meta["files"].items():
        assert (path / name).stat().st_size == record["bytes"]
    assert not [p for p in path.iterdir() if p.name.startswith(".")]  # no temporary files


def test_loading_never_unpickles(exported, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pickle(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_pickle)
    _model, path = exported["lenet300"]
    for fmt in ("safetensors", "csr", "bsr"):
        load(path, format=fmt)


# --- SparseLinear -----------------------------------------------------------------------------


def magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the smallest ``sparsity`` of every Linear weight."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                k = int(sparsity * module.weight.numel())
                threshold = module.weight.abs().flatten().kthvalue(k).values
                module.weight.mul_(module.weight.abs() > threshold)
    return model


def block_prune(model: nn.Module, sparsity: float, block: int = 8) -> nn.Module:
    """Zero a random ``sparsity`` of the ``block x block`` tiles of every Linear weight."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                rows, cols = module.weight.shape
                tiles = (-(-rows // block), -(-cols // block))
                kept = max(1, round((1 - sparsity) * tiles[0] * tiles[1]))
                keep = torch.zeros(tiles[0] * tiles[1], dtype=torch.bool)
                keep[torch.randperm(keep.numel(), generator=generator)[:kept]] = True
                keep = keep.view(tiles).repeat_interleave(block, 0).repeat_interleave(block, 1)
                module.weight.mul_(keep[:rows, :cols])
    return model


@pytest.mark.parametrize(("fmt", "prune"), [("csr", magnitude_prune), ("bsr", block_prune)])
def test_sparse_linear_at_90_percent(fmt: str, prune) -> None:
    torch.manual_seed(0)
    model = prune(build_model("lenet300"), 0.9).eval()
    sparse_model = sparsify(model, fmt, min_sparsity=0.85)
    for name, dense in model.named_modules():
        if not isinstance(dense, nn.Linear):
            continue
        layer = sparse_model.get_submodule(name)
        assert isinstance(layer, SparseLinear) and layer.format == fmt
        assert 0.85 <= layer.sparsity <= 0.96  # whole tiles: edges of small layers vary
        assert layer.nbytes < dense.weight.numel() * 4 * 0.5 < layer.dense_nbytes
        for rows in (1, 64):
            x = torch.randn(rows, dense.in_features)
            expected = F.linear(x, dense.weight, dense.bias)
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert sparse_size_bytes(sparse_model) < 0.5 * dense_size_bytes(sparse_model)
    assert dense_size_bytes(sparse_model) == sparse_size_bytes(model)
    x = batch(model, n=64)
    with torch.no_grad():
        torch.testing.assert_close(sparse_model(x), model(x), rtol=1e-5, atol=1e-5)


def test_sparse_linear_call_path_by_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    linear, addmm = F.linear, torch.addmm
    monkeypatch.setattr(F, "linear", lambda *a, **k: calls.append("linear") or linear(*a, **k))
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append("mm") or addmm(*a, **k))
    layer = SparseLinear.from_linear(nn.Linear(20, 7), "csr")
    layer(torch.randn(1, 20))
    layer(torch.randn(16, 20))
    assert calls == ["linear", "mm"]


def test_sparse_linear_shapes_and_conversions() -> None:
    torch.manual_seed(0)
    dense = magnitude_prune(nn.Sequential(nn.Linear(30, 13)), 0.7)[0]
    for fmt in ("csr", "bsr"):
        layer = SparseLinear.from_linear(dense, fmt, block=4)
        for shape in [(30,), (3, 5, 30)]:
            x = torch.randn(*shape)
            out = layer(x)
            assert out.shape == (*shape[:-1], 13)
            torch.testing.assert_close(out, dense(x), rtol=1e-5, atol=1e-5)
        back = layer.to_dense_linear()
        assert torch.equal(back.weight, dense.weight) and torch.equal(back.bias, dense.bias)
    no_bias = nn.Linear(10, 4, bias=False)
    torch.testing.assert_close(
        SparseLinear.from_linear(no_bias)(torch.randn(3, 10)).shape, torch.Size([3, 4])
    )
    with pytest.raises(ConfigError):
        SparseLinear.from_linear(dense, "coo")


def test_sparsify_leaves_dense_layers_below_threshold() -> None:
    model = build_model("lenet300")
    with torch.no_grad():
        model.fc1.weight[:, ::2] = 0  # 50 % zero
    sparse = sparsify(model, "csr", min_sparsity=0.4)
    assert isinstance(sparse.fc1, SparseLinear)
    assert isinstance(sparse.fc2, nn.Linear) and isinstance(model.fc1, nn.Linear)


# --- compacted models -------------------------------------------------------------------------


def test_compacted_lenet300_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("lenet300").eval()
    model.fc1 = nn.Linear(784, 120)
    model.fc2 = nn.Linear(120, 100)
    path = export(model, tmp_path / "small", model_name="lenet300", formats=("safetensors", "csr"))
    architecture = read_metadata(path)["architecture"]
    assert architecture["resized_layers"] == 2
    assert architecture["layers"]["fc1"]["out_features"] == 120
    assert architecture["layers"]["fc2"]["in_features"] == 120
    x = batch(model)
    loaded = load(path)
    assert loaded.fc1.out_features == 120
    assert_same_state(model, loaded)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    sparse = load(path, format="csr")
    assert isinstance(sparse.fc1, SparseLinear) and sparse.fc1.out_features == 120
    assert_same_state(model, densify(sparse))


def test_compacted_resnet_convs_and_batchnorms_round_trip(tmp_path: Path) -> None:
    model = pruned_model("resnet20", sparsity=0.0)
    block = model.layer1[0]
    block.conv1 = nn.Conv2d(16, 8, 3, padding=1, bias=False)
    block.bn1 = nn.BatchNorm2d(8)
    block.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    model.eval()
    path = export(model, tmp_path / "resnet", model_name="resnet20")
    assert read_metadata(path)["architecture"]["resized_layers"] == 3
    loaded = load(path)
    assert loaded.layer1[0].bn1.num_features == 8
    assert_same_state(model, loaded)
    x = batch(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_model_outside_the_registry(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3))
    path = export(model.eval(), tmp_path / "custom", input_shape=(1, 6, 6))
    with pytest.raises(CheckpointError, match="model="):
        load(path)
    skeleton = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3))
    assert_same_state(model, load(path, model=skeleton))


class SameConv2d(nn.Conv2d):
    """A Conv2d subclass whose constructor takes other arguments (like timm's Conv2dSame or
    transformers' EfficientNetDepthwiseConv2d): it cannot be rebuilt from a Conv2d record."""

    def __init__(self, channels: int, multiplier: int = 1) -> None:
        super().__init__(channels, channels * multiplier, 3, groups=channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1), mode="replicate"))


class TwoLinear(nn.Linear):
    def __init__(self, width: int) -> None:
        super().__init__(width, 2 * width)


def subclass_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 1),
        nn.BatchNorm2d(6),
        SameConv2d(6),
        nn.Flatten(),
        TwoLinear(6 * 16),
        nn.ReLU(),
        nn.Linear(2 * 6 * 16, 3),
    )


def test_subclassed_conv_and_linear_are_resized_in_place(tmp_path: Path) -> None:
    """Before, load refused a resized layer that is not a plain nn.Conv2d / nn.Linear."""
    torch.manual_seed(0)
    model = subclass_net().eval()
    with torch.no_grad():  # nothing reads channels 1, 3, 4 (16 inputs each); 40 neurons kept
        for index in (1, 3, 4):
            model[4].weight[:, 16 * index : 16 * (index + 1)] = 0
        model[4].weight[40:] = 0
        model[4].bias[40:] = 0
    compact_model = compact(model, None, (1, 4, 4)).model
    assert compact_model[2].out_channels == 3 and compact_model[2].groups == 3
    assert type(compact_model[2]) is SameConv2d and compact_model[4].out_features == 40
    path = export(compact_model, tmp_path / "subclass", input_shape=(1, 4, 4))
    skeleton = subclass_net()
    loaded = load(path, model=skeleton)
    assert loaded is skeleton and type(loaded[2]) is SameConv2d
    assert (loaded[1].num_features, loaded[1].running_mean.shape) == (3, (3,))
    assert_same_state(compact_model, loaded)
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), compact_model(x))
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_subclass_with_another_kernel_is_refused_in_one_line(tmp_path: Path) -> None:
    model = nn.Sequential(SameConv2d(2))
    path = export(model, tmp_path / "kernel", input_shape=(2, 4, 4))
    other = nn.Sequential(SameConv2d(2))
    other[0].stride = (2, 2)
    with pytest.raises(CheckpointError, match=r"layer '0' with other stride") as err:
        load(path, model=other)
    assert "\n" not in str(err.value)


def tiny_efficientnet(seed: int = 0) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.EfficientNetConfig(
        image_size=16,
        width_coefficient=0.1,
        depth_coefficient=0.2,
        hidden_dim=128,
        num_labels=3,
        in_channels=[32, 16],
        out_channels=[16, 24],
        kernel_sizes=[3, 3],
        strides=[1, 2],
        num_block_repeats=[1, 1],
        expand_ratios=[1, 6],
    )
    torch.manual_seed(seed)
    return transformers.EfficientNetForImageClassification(config).eval()


def test_compacted_hugging_face_efficientnet_loads(tmp_path: Path) -> None:
    """EfficientNetDepthwiseConv2d(nn.Conv2d) takes depth_multiplier, not out_channels."""
    model = tiny_efficientnet()
    with torch.no_grad():  # drop half of the filters of every 1x1 and depthwise conv
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and (
                module.kernel_size == (1, 1) or module.groups == module.in_channels > 1
            ):
                module.weight[: module.out_channels // 2] = 0
    compact_model = compact(model, None, (3, 16, 16)).model
    depthwise = compact_model.efficientnet.encoder.blocks[1].depthwise_conv.depthwise_conv
    assert type(depthwise).__name__ == "EfficientNetDepthwiseConv2d"
    assert depthwise.out_channels == depthwise.groups == 24  # 48 before
    path = export(compact_model, tmp_path / "efficientnet", input_shape=(3, 16, 16))
    loaded = load(path, model=tiny_efficientnet(seed=1))
    assert_same_state(compact_model, loaded)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, compact_model(x).logits)


# --- masks ------------------------------------------------------------------------------------


def test_masks_are_stored_and_listed(tmp_path: Path) -> None:
    model = pruned_model("lenet300")
    masks = {name: model.get_parameter(name) != 0 for name in ("fc1.weight", "fc2.weight")}
    path = export(model, tmp_path / "masked", model_name="lenet300", masks=masks)
    listed = read_metadata(path)["masks"]["tensors"]
    assert [t["name"] for t in listed] == ["fc1.weight", "fc2.weight"]
    assert listed[0]["nonzero"] == int(masks["fc1.weight"].sum())
    loaded = load_masks(path)
    assert loaded.keys() == masks.keys()
    assert all(torch.equal(loaded[k], masks[k]) and loaded[k].dtype == torch.bool for k in masks)
    with pytest.raises(ConfigError, match=r"fc9\.weight"):
        export(
            model,
            tmp_path / "bad",
            model_name="lenet300",
            masks={"fc9.weight": masks["fc1.weight"]},
        )


# --- refusing and failing clearly -------------------------------------------------------------


@pytest.fixture
def small_export(tmp_path: Path) -> Path:
    return export(pruned_model("lenet300"), tmp_path / "lenet300", model_name="lenet300")


def assert_clear(err: pytest.ExceptionInfo[BaseException], filename: str) -> None:
    message = str(err.value)
    assert isinstance(err.value, LearnpruneError)
    assert filename in message and "\n" not in message


def test_export_refuses_to_overwrite_another_export(tmp_path: Path) -> None:
    model = pruned_model("lenet300")
    path = export(model, tmp_path / "out", model_name="lenet300", formats=("safetensors", "csr"))
    with pytest.raises(CheckpointError, match="overwrite=True"):
        export(model, path, model_name="lenet300")
    assert (path / FILES["csr"]).exists()  # untouched
    export(model, path, model_name="lenet300", overwrite=True)
    assert not (path / FILES["csr"]).exists()  # the old export's files are gone
    assert read_metadata(path)["formats"] == ["safetensors"]


def users_files(directory: Path) -> dict[str, bytes]:
    """A directory holding files of the user's own, one with an export's file name."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(b"the user's own ONNX model")
    (directory / "notes.txt").write_bytes(b"my notes")
    (directory / "runs").mkdir()
    return {"model.onnx": b"the user's own ONNX model", "notes.txt": b"my notes"}


def test_export_never_touches_a_file_learnprune_did_not_write(tmp_path: Path) -> None:
    """Before, an export into a directory without model.json deleted the user's model.onnx."""
    model = pruned_model("lenet300")
    target = tmp_path / "mixed"
    theirs = users_files(target)
    with pytest.raises(CheckpointError) as err:
        export(model, target, model_name="lenet300")
    assert_clear(err, "model.onnx, notes.txt, runs")
    assert sorted(p.name for p in target.iterdir()) == ["model.onnx", "notes.txt", "runs"]
    export(model, target, model_name="lenet300", formats=("safetensors", "csr"), overwrite=True)
    export(model, target, model_name="lenet300", overwrite=True)  # drops its own csr file
    assert sorted(p.name for p in target.iterdir()) == [
        "model.json",
        "model.onnx",
        "model.safetensors",
        "notes.txt",
        "runs",
    ]
    assert all((target / name).read_bytes() == data for name, data in theirs.items())
    assert_same_state(model, load(target))


def test_an_empty_directory_and_leftover_temporaries_are_fine(tmp_path: Path) -> None:
    model = pruned_model("lenet300")
    (tmp_path / "empty").mkdir()
    export(model, tmp_path / "empty", model_name="lenet300")
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / ".model.safetensors.k2j4.tmp").write_bytes(b"half")
    export(model, interrupted, model_name="lenet300")
    assert sorted(p.name for p in interrupted.iterdir()) == ["model.json", "model.safetensors"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_every_exported_file_honours_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """Before, model.onnx came from tempfile.mkstemp and was 0600 whatever the umask."""
    model = pruned_model("lenet300")
    formats = ["safetensors", "csr", "bsr"] + (["onnx"] if HAS_ORT else [])
    masks = {"fc1.weight": model.fc1.weight != 0}
    before = os.umask(umask)
    try:
        target = export(
            model,
            tmp_path / "out",
            model_name="lenet300",
            formats=formats,
            masks=masks,
            extra_files={"notes.json": b"{}"},
        )
    finally:
        os.umask(before)
    modes = {p.name: p.stat().st_mode & 0o777 for p in target.iterdir()}
    expected = {"model.json", "masks.safetensors", "notes.json", *(FILES[f] for f in formats)}
    assert set(modes) == expected
    assert set(modes.values()) == {mode}, modes


def strict_json(text: str) -> object:
    """``json.loads`` that refuses NaN and ±Infinity, as every parser but Python's does."""

    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_every_json_file_of_an_export_is_strict_json(tmp_path: Path) -> None:
    """Before, a layer argument such as BatchNorm's momentum=nan went to model.json as
    ``NaN``, which no strict JSON parser reads; now such a model is refused in one line."""
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=float("nan")))
    with pytest.raises(UnsupportedModelError) as err:
        export(model, tmp_path / "nan")
    assert_clear(err, "layer '1' (BatchNorm1d)")
    assert not (tmp_path / "nan").exists()
    target = export(pruned_model("lenet300"), tmp_path / "ok", model_name="lenet300")
    assert strict_json((target / "model.json").read_text())["format"] == "learnprune-export"


def kill_export_at(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make the next export die the way a killed process would while writing ``name``: the
    files before it written, a partial temporary of it left, nothing after it."""
    write = export_module.atomic_write_bytes

    def killed_while_writing(path: Path, data: bytes) -> None:
        if path.name == name:
            (path.parent / f".{name}.4f2a9c.tmp").write_bytes(data[: len(data) // 2])
            monkeypatch.setattr(export_module, "atomic_write_bytes", write)
            raise KeyboardInterrupt
        write(path, data)

    monkeypatch.setattr(export_module, "atomic_write_bytes", killed_while_writing)


def test_an_interrupted_export_is_refused_by_load_and_restarts_without_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the files of an export killed before its model.json counted as the user's:
    the next export refused them and pointed to --overwrite."""
    model = pruned_model("lenet300")
    target = tmp_path / "out"
    kill_export_at(monkeypatch, FILES["csr"])
    with pytest.raises(KeyboardInterrupt):
        export(model, target, model_name="lenet300", formats=("safetensors", "csr"))
    assert (target / "model.safetensors").exists() and not (target / FILES["csr"]).exists()
    manifest = json.loads((target / "model.json").read_text())
    assert manifest["complete"] is False
    assert manifest["files"] == ["model.safetensors", "sparse_csr.safetensors"]
    with pytest.raises(CheckpointError, match="was interrupted before it finished") as err:
        load(target)
    assert_clear(err, "model.json")
    export(model, target, model_name="lenet300")  # no overwrite needed
    assert sorted(p.name for p in target.iterdir()) == ["model.json", "model.safetensors"]
    assert read_metadata(target)["complete"] is True
    assert_same_state(model, load(target))


def test_an_interrupted_replacement_restarts_and_keeps_the_users_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = pruned_model("lenet300")
    target = tmp_path / "out"
    export(
        model,
        target,
        model_name="lenet300",
        formats=("csr",),
        masks={"fc1.weight": model.fc1.weight != 0},
    )
    (target / "notes.txt").write_bytes(b"my notes")
    kill_export_at(monkeypatch, "model.safetensors")
    with pytest.raises(KeyboardInterrupt):
        export(model, target, model_name="lenet300", overwrite=True)
    # the replaced export's files are listed by the manifest, so they are learnprune's
    assert set(json.loads((target / "model.json").read_text())["files"]) == {
        "model.safetensors",
        "sparse_csr.safetensors",
        "masks.safetensors",
    }
    with pytest.raises(CheckpointError) as err:  # the user's file still needs overwrite
        export(model, target, model_name="lenet300")
    assert_clear(err, "did not write (notes.txt)")
    export(model, target, model_name="lenet300", overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == [
        "model.json",
        "model.safetensors",
        "notes.txt",
    ]
    assert (target / "notes.txt").read_bytes() == b"my notes"
    assert_same_state(model, load(target))


def test_extra_files_are_listed_as_the_exports_own(tmp_path: Path) -> None:
    model = pruned_model("lenet300")
    target = export(model, tmp_path / "x", model_name="lenet300", extra_files={"a.json": b"{}"})
    assert read_metadata(target)["files"]["a.json"]["bytes"] == 2
    export(model, target, model_name="lenet300", overwrite=True)  # a.json was the export's
    assert not (target / "a.json").exists()
    for name in ("model.json", "../a.json", ".hidden"):
        with pytest.raises(ConfigError, match="extra file name"):
            export(model, tmp_path / "y", model_name="lenet300", extra_files={name: b""})


def test_missing_directory_and_files(small_export: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no export directory") as err:
        load(tmp_path / "nowhere")
    assert_clear(err, "nowhere")
    with pytest.raises(CheckpointError) as err:
        load(small_export, format="csr")  # not exported in that format
    assert_clear(err, str(small_export))
    (small_export / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing") as err:
        load(small_export)
    assert_clear(err, "model.safetensors")
    (small_export / "model.json").unlink()
    with pytest.raises(CheckpointError, match="not a learnprune export") as err:
        load(small_export)
    assert_clear(err, "model.json")


def test_truncated_safetensors(small_export: Path) -> None:
    file = small_export / "model.safetensors"
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load(small_export)
    assert_clear(err, str(file))


def test_corrupt_safetensors_that_matches_its_checksum(small_export: Path) -> None:
    # a file broken before it was hashed: safetensors' own error, wrapped
    file = small_export / "model.safetensors"
    data = file.read_bytes()[:1000]
    file.write_bytes(data)
    meta_path = small_export / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["files"]["model.safetensors"] = export_module._file_record(data)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="corrupt") as err:
        load(small_export)
    assert_clear(err, str(file))


@pytest.mark.parametrize("text", ["{not json", '{"format": "learnprune-export", "format_v', "[]"])
def test_malformed_json(small_export: Path, text: str) -> None:
    (small_export / "model.json").write_text(text)
    with pytest.raises(CheckpointError) as err:
        load(small_export)
    assert_clear(err, "model.json")


def edit_json(path: Path, edit) -> None:
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))


def test_newer_format_version(small_export: Path) -> None:
    edit_json(small_export, lambda meta: meta.update(format_version=2))
    with pytest.raises(CheckpointError, match=r"version 2.*upgrade") as err:
        load(small_export)
    assert_clear(err, "model.json")


def test_shapes_that_do_not_match(small_export: Path) -> None:
    # the layer records are what rebuilds the model: a record that disagrees with the tensors
    edit_json(
        small_export,
        lambda meta: meta["architecture"]["layers"]["fc3"].update(out_features=5),
    )
    with pytest.raises(CheckpointError, match=r"fc3\.weight.*\[10, 100\]") as err:
        load(small_export)
    assert_clear(err, "model.safetensors")


def test_export_argument_errors(tmp_path: Path) -> None:
    model = pruned_model("lenet300")
    with pytest.raises(ConfigError, match="does not describe"):
        export(model, tmp_path / "a", model_name="lenet5")
    with pytest.raises(ConfigError, match="unknown export format"):
        export(model, tmp_path / "b", formats=("pickle",))
    gated = build_model("lenet300")
    parametrize.register_parametrization(gated.fc1, "weight", nn.Identity())
    with pytest.raises(UnsupportedModelError, match="finalize"):
        export(gated, tmp_path / "c")
    with pytest.raises(ConfigError, match="onnxruntime"):
        load(tmp_path / "a", format="onnx")


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_failed_onnx_check_is_a_clear_error_and_keeps_the_old_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = pruned_model("lenet300")
    path = export(model, tmp_path / "x", model_name="lenet300")
    before = sorted(p.name for p in path.iterdir())

    class OffByOne(ort.InferenceSession):  # an exporter bug, simulated
        def run(self, *args: object, **kwargs: object) -> list:
            return [out + 1 for out in super().run(*args, **kwargs)]

    monkeypatch.setattr(ort, "InferenceSession", OffByOne)
    with pytest.raises(UnsupportedModelError, match="ONNX Runtime and PyTorch differ"):
        export(model, path, model_name="lenet300", formats=("onnx",), overwrite=True)
    assert sorted(p.name for p in path.iterdir()) == before  # no model.onnx, no temporary
    assert_same_state(model, load(path))  # the previous export is intact


# --- ONNX on real example inputs (token ids) ------------------------------------------------

VOCAB = 50


def tiny_text_model(family: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "bert":
        config = transformers.BertConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
        )
        return transformers.BertModel(config).eval()
    if family == "distilbert":
        config = transformers.DistilBertConfig(
            vocab_size=VOCAB,
            dim=16,
            n_layers=1,
            n_heads=2,
            hidden_dim=32,
            max_position_embeddings=16,
        )
        return transformers.DistilBertModel(config).eval()
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
@pytest.mark.parametrize(
    "family", ["bert", pytest.param("distilbert", marks=pytest.mark.slow), "llama"]
)
def test_onnx_export_of_a_token_id_model_runs_on_the_real_ids(tmp_path: Path, family) -> None:
    """Before, ONNX export fed float noise of input_shape into the embedding."""
    import onnxruntime as ort

    model = tiny_text_model(family)
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (2, 7), generator=generator)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # a padded second sentence
    inputs = {"input_ids": ids, "attention_mask": mask}
    path = export(model, tmp_path / family, formats=("onnx",), example_inputs=inputs)
    record = read_metadata(path)["onnx"]
    assert record["verified_on"] == "example_inputs" and record["dynamic_batch"]
    assert record["inputs"] == [
        {"name": "input_ids", "shape": ["batch", 7], "dtype": "int64"},
        {"name": "attention_mask", "shape": ["batch", 7], "dtype": "int64"},
    ]
    session = ort.InferenceSession(str(path / FILES["onnx"]), providers=["CPUExecutionProvider"])
    other_ids = torch.randint(0, VOCAB, (3, 7), generator=generator)  # another batch size
    feed = {"input_ids": other_ids.numpy(), "attention_mask": torch.ones_like(other_ids).numpy()}
    got = torch.from_numpy(session.run(None, feed)[0])
    with torch.no_grad():
        expected = model(input_ids=other_ids, attention_mask=torch.ones_like(other_ids))[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


class ColourfulFailure(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("\x1b[31mcannot trace\x1b[0m this layer\n\n  because: no reason\r\n")


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_a_failed_onnx_export_is_one_clean_line_naming_model_and_reason(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError) as err:
        export(ColourfulFailure(), tmp_path / "fails", formats=("onnx",), input_shape=(3,))
    assert str(err.value) == (
        "ONNX export of ColourfulFailure failed: "
        "RuntimeError: cannot trace this layer | because: no reason"
    )
    assert not (tmp_path / "fails" / "model.json").exists()


def test_example_inputs_must_be_tensors_tuples_or_dicts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="example_inputs must be"):
        export(nn.Linear(2, 2), tmp_path / "x", formats=("onnx",), example_inputs="ids")
    with pytest.raises(ConfigError, match=r"example_inputs .* or input_shape"):
        export(nn.Linear(2, 2), tmp_path / "x", formats=("onnx",))



def test_output_difference_counts_the_same_infinity_on_both_sides_as_none() -> None:
    from learnprune.export import max_difference

    ours = torch.tensor([float("inf"), 1.0, -float("inf")])
    assert max_difference(ours, torch.tensor([float("inf"), 1.5, -float("inf")])) == 0.5
    assert max_difference(ours, ours.clone()) == 0.0
    assert math.isinf(max_difference(ours, torch.tensor([1.0, 1.0, -float("inf")])))
