"""Prunability report on a model a user brings: attention, depthwise and grouped convs, a
concat, an embedding, a raw parameter, an unused layer; group masks checked by forward
passes; the ``learnprune inspect`` command."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
from conftest import call_cli
from torch import Tensor, nn

from learnprune import masking
from learnprune.errors import ConfigError, UnsupportedModelError
from learnprune.groups import GroupPlan, GroupSet, build_groups
from learnprune.inspection import ROOT, UncoveredParametersWarning, prunability_report
from learnprune.methods import SCL, HardConcrete, Magnitude
from learnprune.models import build_model

SHAPE = (3, 8, 8)


class UserNet(nn.Module):
    """Conv stem + BN, a depthwise conv, two branches concatenated (one a grouped conv),
    attention over the 4x4 positions with a learned position table, a raw scale, a head,
    and a layer the forward pass never calls."""

    def __init__(self, branch_groups: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.branch_a = nn.Conv2d(8, 8, 1)
        self.branch_b = nn.Conv2d(8, 8, 3, padding=1, groups=branch_groups)
        self.proj = nn.Conv2d(16, 16, 1)
        self.pos = nn.Embedding(16, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.scale = nn.Parameter(torch.ones(16))
        self.head = nn.Linear(16, 10)
        self.unused = nn.Linear(16, 16)
        self.input_shape = SHAPE

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.dw(x))
        x = torch.cat([torch.relu(self.branch_a(x)), torch.relu(self.branch_b(x))], dim=1)
        x = nn.functional.max_pool2d(self.proj(x), 2)
        tokens = x.flatten(2).transpose(1, 2) + self.pos.weight
        attended, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        tokens = self.norm(tokens + attended) * self.scale
        return self.head(tokens.mean(1))


class ConcatNet(UserNet):
    """UserNet whose second branch is a plain conv, so coupled groups reach the concat."""

    def __init__(self) -> None:
        super().__init__(branch_groups=1)


@pytest.fixture(autouse=True)
def _setup(one_thread: None) -> Iterator[None]:
    torch.manual_seed(0)
    with warnings.catch_warnings():  # Torch-Pruning on the raw `scale`; learnprune's own
        warnings.filterwarnings("ignore", "Unwrapped parameters")
        warnings.simplefilter("ignore", UncoveredParametersWarning)
        yield


# --------------------------------------------------------------------------------------------
# the report's rows
# --------------------------------------------------------------------------------------------


def test_element_report_names_every_parameter_bearing_module_pruned_skipped_or_unused() -> None:
    report = prunability_report(UserNet(), "element", input_shape=SHAPE)
    status = {row.name: row.status for row in report.rows}
    assert status == {
        ROOT: "skipped",
        "stem": "pruned",
        "bn": "skipped",
        "dw": "pruned",
        "branch_a": "pruned",
        "branch_b": "pruned",
        "proj": "pruned",
        "pos": "skipped",
        "attn": "skipped",
        "attn.out_proj": "pruned",
        "norm": "skipped",
        "head": "pruned",
        "unused": "unused",
    }
    assert "in_proj_weight" in report.row("attn").reason
    assert report.row("attn.out_proj").tensors == ("weight",)
    assert report.row("attn.out_proj").groups == 16 * 16
    assert "embedding" in report.row("pos").reason
    assert "raw nn.Parameter" in report.row(ROOT).reason
    assert "normalisation" in report.row("norm").reason
    assert "not used in forward" in report.row("unused").reason
    assert "depthwise" in report.row("dw").reason
    assert "grouped (groups=2)" in report.row("branch_b").reason
    assert report.params == sum(p.numel() for p in UserNet().parameters())
    table = report.table()
    assert "attn.out_proj" in table and "not used in forward" in table
    assert report.as_dict()["rows"][1]["name"] == "stem"


def test_structured_report_keeps_the_classifier_and_honours_exclude_patterns() -> None:
    report = prunability_report(
        UserNet(), "out_channel", input_shape=SHAPE, exclude=["proj", "pos"]
    )
    assert report.row("head").status == "skipped"
    assert "classifier" in report.row("head").reason
    assert report.row("proj").reason == "excluded by pattern"
    assert report.row("pos").reason == "excluded by pattern"
    assert report.row("stem").tensors == ("weight", "bias")
    assert report.row("stem").groups == 8


def test_coupled_report_explains_groups_left_whole_by_a_grouped_conv_and_attention() -> None:
    report = prunability_report(UserNet(), "coupled", input_shape=SHAPE)
    assert "grouped Conv2d, groups=2" in report.row("branch_b").reason
    # stem -> bn -> depthwise -> both branches: one channel group, refused as a whole
    for name in ("stem", "bn", "dw"):
        assert report.row(name).status == "skipped"
        assert "grouped Conv2d" in report.row(name).reason
    assert report.row("branch_a").status == "pruned"
    assert report.row("proj").tensors == ("weight (inputs)",)
    assert "MultiheadAttention" in report.row("proj").reason
    assert "traces as one layer" in report.row("attn.out_proj").reason
    assert any("MultiheadAttention" in why for why in report.skipped_groups.values())


def test_recurrent_transposed_conv_and_untraceable_models_are_reported_not_ignored() -> None:
    class Sequence(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(6, 8, batch_first=True)
            self.up = nn.ConvTranspose1d(8, 4, 3)
            self.head = nn.Linear(4 * 7, 3)

        def forward(self, x: Tensor) -> Tensor:
            hidden, _ = self.lstm(x)
            return self.head(self.up(hidden.transpose(1, 2)).flatten(1))

    report = prunability_report(Sequence(), "out_channel", input_shape=(5, 6))
    assert "recurrent" in report.row("lstm").reason
    assert "transposed conv" in report.row("up").reason
    assert report.row("head").status == "skipped"  # the classifier; nothing else to cut

    class Tokens(nn.Module):  # takes token ids: a random float example cannot run it
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, ids: Tensor) -> Tensor:
            return self.head(self.embed(ids).mean(1))

    report = prunability_report(Tokens())  # not traced: nothing runs the model
    assert report.row("head").status == "pruned"
    with pytest.raises(UnsupportedModelError, match="input_shape"):  # float noise into ids
        prunability_report(Tokens(), input_shape=(12,))


def wrong_shape_net() -> nn.Sequential:
    """A conv net for 8x8 inputs: any other size breaks its Linear layer."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.ReLU(),
        nn.Linear(5, 2),
    )


@pytest.mark.parametrize("kind", ["element", "out_channel", "coupled"])
def test_report_on_a_wrong_input_shape_is_one_line_naming_the_shape(kind: str) -> None:
    with pytest.raises(UnsupportedModelError) as raised:
        prunability_report(wrong_shape_net(), kind, input_shape=(3, 9, 9))
    message = str(raised.value)
    assert "input_shape (3, 9, 9)" in message
    assert "mat1 and mat2 shapes cannot be multiplied" in message  # the model's own words
    assert "\n" not in message


@pytest.mark.parametrize(
    "build",
    [
        lambda model: SCL(model, groups="coupled", input_shape=(3, 9, 9)),
        lambda model: Magnitude(model, groups="out_channel", input_shape=(3, 9, 9), target=0.5),
        lambda model: HardConcrete(model, groups="l0_units", input_shape=(3, 9, 9)),
    ],
)
def test_method_built_with_a_wrong_input_shape_refuses_in_one_line(
    build: Callable[[nn.Module], object],
) -> None:
    model = wrong_shape_net()
    with pytest.raises(UnsupportedModelError, match=r"input_shape \(3, 9, 9\).*mat1 and mat2"):
        build(model)
    assert not any(True for _ in masking.gated_tensors(model))  # refused before any gate


def test_coupled_report_without_an_input_shape_is_a_config_error() -> None:
    model = UserNet()
    del model.input_shape
    with pytest.raises(ConfigError, match="input_shape"):
        prunability_report(model, "coupled")
    assert prunability_report(model, "element").row("unused").status == "pruned"


def test_report_refuses_a_model_that_carries_gates() -> None:
    model = UserNet()
    Magnitude(model, target=0.5)
    with pytest.raises(ConfigError, match="gates"):
        prunability_report(model)


# --------------------------------------------------------------------------------------------
# group masks on that model, checked by forward passes
# --------------------------------------------------------------------------------------------


def _gated(model: nn.Module, group_set: GroupSet, drop: int) -> nn.Module:
    """The model with group ``drop`` of ``group_set`` masked through the real gates."""
    gates = masking.attach(model, GroupPlan([group_set]), masking.FixedMask)
    keep = torch.ones(group_set.num_groups, dtype=torch.bool)
    keep[drop] = False
    gates[group_set.name].set(keep)
    return model


def _channel(tensor: Tensor, module: nn.Module, positions: Tensor) -> Tensor:
    """The given channels of a module's input or output (last axis for Linear)."""
    return tensor[..., positions] if isinstance(module, nn.Linear) else tensor[:, positions]


def _positions(piece: object, drop: int, size: int) -> Tensor:
    index = piece.index  # type: ignore[attr-defined]
    return torch.tensor([drop]) if index is None else torch.nonzero(index == drop).flatten()


@torch.no_grad()
def _seen(model: nn.Module, names: set[str]) -> dict[str, tuple[Tensor, Tensor]]:
    """Inputs and outputs of the named modules (attention's out_proj via the attention)."""
    seen: dict[str, tuple[Tensor, Tensor]] = {}
    hooks = []
    for name in names:
        holder = name.rpartition(".")[0] if name.endswith("out_proj") else name
        module = model.get_submodule(holder)

        def hook(_m: nn.Module, inputs: tuple, output: object, name: str = name) -> None:
            seen[name] = (inputs[0], output[0] if isinstance(output, tuple) else output)

        hooks.append(module.register_forward_hook(hook))
    model.eval()
    output = model(torch.randn(4, *SHAPE))
    for handle in hooks:
        handle.remove()
    assert torch.isfinite(output).all() and output.shape == (4, 10)
    return seen


@pytest.mark.parametrize("kind", ["out_channel", "coupled"])
def test_dropping_a_group_zeroes_whole_channels_and_the_model_still_runs(kind: str) -> None:
    plan = build_groups(ConcatNet(), kind, input_shape=SHAPE)
    if kind == "coupled":  # depthwise and concat inside coupled groups
        members = {s.name: {p.param for p in s.slices} for s in plan.sets}
        assert {"stem.weight", "bn.weight", "dw.weight"} <= members["coupled:dw"]
        concat = next(s for s in plan.sets if s.name == "coupled:branch_b")
        proj_columns = next(p for p in concat.slices if p.param == "proj.weight")
        assert proj_columns.index is not None
        assert proj_columns.index.tolist() == [-1] * 8 + list(range(8))
    for group_set in plan.sets:
        if group_set.name == "unused.weight":  # never runs: nothing to see
            continue
        drop = group_set.num_groups - 1
        torch.manual_seed(0)
        model = _gated(ConcatNet(), group_set, drop)
        modules = {p.module for p in group_set.slices}
        seen = _seen(model, modules)
        for piece in group_set.slices:
            module = model.get_submodule(piece.module)
            inputs, outputs = seen[piece.module]
            positions = _positions(piece, drop, piece.shape[piece.dim or 0])
            # a producer writes zeros on the channel; a consumer reads zeros there
            tensor = outputs if piece.role == "out" else inputs
            assert torch.count_nonzero(_channel(tensor, module, positions)) == 0, (
                group_set.name,
                piece.param,
            )


@pytest.mark.parametrize("layer", ["dw", "branch_b"])
def test_in_channel_groups_of_depthwise_and_grouped_convs_cut_exactly_one_input_map(
    layer: str,
) -> None:
    plan = build_groups(UserNet(), "in_channel", input_shape=SHAPE)
    group_set = next(s for s in plan.sets if s.name == f"{layer}.weight")
    assert group_set.num_groups == 8  # one per input map, not per column of the weight
    for drop in (0, 5):
        torch.manual_seed(0)
        model = _gated(UserNet(), group_set, drop).eval()
        conv = model.get_submodule(layer)
        x = torch.randn(2, 8, 8, 8)
        with torch.no_grad():
            base = conv(x)
            for channel in range(8):
                poked = x.clone()
                poked[:, channel] += 1.0
                changed = not torch.allclose(conv(poked), base)
                assert changed == (channel != drop), (layer, drop, channel)


def test_depthwise_conv_with_a_channel_multiplier_is_not_coupled_to_the_wrong_filters() -> None:
    class Multiplier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
            self.head = nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.dw(torch.relu(self.stem(x))).mean((2, 3)))

    plan = build_groups(Multiplier(), "coupled", input_shape=SHAPE)
    assert [s.name for s in plan.sets] == ["coupled:dw"]
    assert "depthwise Conv2d, 2 filters per input channel" in plan.skipped["stem.weight"]


# --------------------------------------------------------------------------------------------
# nothing silently ignored when a method is built
# --------------------------------------------------------------------------------------------


def test_building_groups_warns_once_about_uncovered_modules_and_describe_lists_them() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method = Magnitude(UserNet(), target=0.5)
    uncovered = [w for w in caught if issubclass(w.category, UncoveredParametersWarning)]
    assert len(uncovered) == 1
    message = str(uncovered[0].message)
    assert "attn (MultiheadAttention, 816)" in message and "pos (Embedding, 256)" in message
    assert "bn" not in message.split(":", 1)[1].split(",")[0]  # norm layers never listed
    assert {"attn", "pos", ROOT} <= set(method.plan.skipped)
    assert "skipped attn: MultiheadAttention" in method.describe()


def test_no_warning_for_models_of_conv_linear_and_norm_layers_only() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = build_groups(build_model("resnet20"), "coupled")
    assert not [w for w in caught if issubclass(w.category, UncoveredParametersWarning)]
    assert not [name for name in plan.skipped if not name.startswith(("fc", "coupled"))]


# --------------------------------------------------------------------------------------------
# learnprune inspect
# --------------------------------------------------------------------------------------------


def test_cli_inspect_prints_the_table_for_a_user_module_and_a_built_in_model() -> None:
    code, out, err = call_cli(
        "inspect", "--module", "test_inspection:UserNet", "--groups", "coupled"
    )
    assert code == 0, err
    assert "prunability of UserNet with groups=coupled" in out
    assert "attn.out_proj" in out and "grouped Conv2d, groups=2" in out
    code, out, _err = call_cli("inspect", "--model", "lenet300", "--input-shape", "1,28,28")
    assert code == 0
    assert "fc1" in out and "pruned: 3 modules" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--module", "no_such_package.nets:Net"], "cannot import no_such_package.nets"),
        (["--module", "test_inspection:NoSuchNet"], "has no attribute 'NoSuchNet'"),
        (["--module", "test_inspection"], "path.to.module:factory"),
        (["--model", "lenet300", "--input-shape", "1,x"], "--input-shape"),
        (["--model", "lenet5", "--input-shape", "1,20,20"], "input_shape (1, 20, 20)"),
    ],
)
def test_cli_inspect_bad_input_is_one_line_and_exit_code_2(argv: list[str], message: str) -> None:
    code, out, err = call_cli("inspect", *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("learnprune: error:") and message in err
