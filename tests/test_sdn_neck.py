"""The SDN-style neck (``hf_semseg/models/modeling_sdn.py``; unofficial, no original code to compare with): the
semantic difference convolution against a slow per-pixel reference written from the formula, its memory behaviour,
gradients, the identity at initialisation, shapes over an odd-sized pyramid and a hand-computed example."""

import math
import re
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hf_semseg.models.modeling_sdn import (
    SDNLevel,
    SDNNeck,
    SemanticDifferenceConvolution,
    _semantic_difference_convolution_for_export,
    init_sdn_weights,
    semantic_difference_convolution,
)


# ----- slow direct definition, pixel by pixel -------------------------------------------------------------------------


def reference_sdc(features, guidance, weight, lambda_, similarity, groups):
    """Y_k(p0) = sum_c sum_n W[k, c, n] * S_c(p0, pn) * (U_c(p0 + pn) - U_c(p0)), S(d) = 1 / sqrt(1 + d**2 / lambda**2),
    in float64 with explicit loops over batch, output channel, pixel, input channel of the group and the 3x3
    neighbours; neighbours outside the image are skipped (they contribute nothing)."""
    u = features.double().tolist()
    v = guidance.double().tolist()
    w = weight.double().tolist()
    batch, in_channels, height, width = features.shape
    out_channels = weight.shape[0]
    guide_channels = guidance.shape[1]
    in_per_group, out_per_group = in_channels // groups, out_channels // groups
    out = torch.zeros(batch, out_channels, height, width, dtype=torch.float64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                for ky in range(3):
                    for kx in range(3):
                        ny, nx = y + ky - 1, x + kx - 1
                        if not (0 <= ny < height and 0 <= nx < width):
                            continue
                        if similarity == "l2":
                            squared = sum((v[b][c][ny][nx] - v[b][c][y][x]) ** 2 for c in range(guide_channels))
                            d = math.sqrt(squared) / math.sqrt(guide_channels)
                            shared = 1.0 / math.sqrt(1.0 + d**2 / lambda_**2)
                        for k in range(out_channels):
                            group = k // out_per_group
                            total = 0.0
                            for j in range(in_per_group):
                                c = group * in_per_group + j
                                if similarity == "per_channel":
                                    d = v[b][c][ny][nx] - v[b][c][y][x]
                                    s = 1.0 / math.sqrt(1.0 + d**2 / lambda_**2)
                                else:
                                    s = shared
                                total += w[k][j][ky][kx] * s * (u[b][c][ny][nx] - u[b][c][y][x])
                            out[b, k, y, x] += total
    return out


@pytest.mark.parametrize("similarity", ["per_channel", "l2"])
@pytest.mark.parametrize(
    ("in_channels", "out_channels", "groups"),
    [(4, 3, 1), (4, 6, 2), (4, 4, 4)],  # full, grouped (C_out != C_in), depthwise
    ids=["groups1", "groups2", "depthwise"],
)
def test_sdc_matches_the_per_pixel_definition(similarity, in_channels, out_channels, groups):
    generator = torch.Generator().manual_seed(1000 * groups + len(similarity))
    features = torch.randn(2, in_channels, 5, 7, generator=generator, dtype=torch.float64)
    guidance = 1.5 * torch.randn(2, in_channels, 5, 7, generator=generator, dtype=torch.float64)
    weight = torch.randn(out_channels, in_channels // groups, 3, 3, generator=generator, dtype=torch.float64)
    for lambda_ in (0.3, 1.0, 4.0):
        expected = reference_sdc(features, guidance, weight, lambda_, similarity, groups)
        got = semantic_difference_convolution(features, guidance, weight, lambda_, similarity, groups)
        assert got.dtype == torch.float64 and got.shape == (2, out_channels, 5, 7)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)  # border pixels included
        # float32 and the module agree as well
        module = SemanticDifferenceConvolution(in_channels, out_channels, lambda_, similarity, groups)
        with torch.no_grad():
            module.weight.copy_(weight.float())
            got32 = module(features.float(), guidance.float())
        torch.testing.assert_close(got32.double(), expected, rtol=1e-5, atol=1e-5)


def test_l2_similarity_takes_guidance_of_any_width():
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(1, 2, 4, 3, generator=generator, dtype=torch.float64)
    guidance = torch.randn(1, 5, 4, 3, generator=generator, dtype=torch.float64)
    weight = torch.randn(2, 2, 3, 3, generator=generator, dtype=torch.float64)
    expected = reference_sdc(features, guidance, weight, 0.8, "l2", 1)
    torch.testing.assert_close(semantic_difference_convolution(features, guidance, weight, 0.8, "l2"), expected)
    with pytest.raises(ValueError, match="per-channel similarity"):
        semantic_difference_convolution(features, guidance, weight, 0.8, "per_channel")


def test_hand_computed_example():
    # U = [[1, 2, 3],     V = [[0, 0, 3],     W = [[1, 0, 2],     lambda = 4
    #      [4, 5, 6],          [0, 0, 3],          [1, 7, 0],
    #      [7, 8, 9]]          [0, 0, 3]]          [0, 1, 1]]
    # centre p0 = (1, 1): U(p0) = 5, V(p0) = 0. Neighbour (dy, dx): dU = 3 dy + dx; dV = 3 in the right column, else 0,
    # so S = 1 / sqrt(1 + 9 / 16) = 4 / 5 in the right column and 1 elsewhere:
    #   (-1,-1): 1 * 1   * (-4) = -4      (-1, 0): 0 * ... = 0          (-1,+1): 2 * 0.8 * (-2) = -3.2
    #   ( 0,-1): 1 * 1   * (-1) = -1      ( 0, 0): 7 * 1 * 0 = 0        ( 0,+1): 0 * ... = 0
    #   (+1,-1): 0 * ... = 0              (+1, 0): 1 * 1 * 3 = 3        (+1,+1): 1 * 0.8 * 4 = 3.2
    #   Y(1, 1) = -4 - 3.2 - 1 + 3 + 3.2 = -2
    # corner p0 = (0, 0): U = 1, V = 0; only (0,+1), (+1,0), (+1,+1) are inside the image (the other five contribute
    # nothing); dV = 0 for all three, so Y(0, 0) = W[1,2] * 1 + W[2,1] * 3 + W[2,2] * 4 = 0 + 3 + 4 = 7
    # (zero padding would have added W[0,0] * S(0) * (0 - 1) + ... for the out-of-image neighbours)
    u = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]).reshape(1, 1, 3, 3)
    v = torch.tensor([[0.0, 0, 3], [0, 0, 3], [0, 0, 3]]).reshape(1, 1, 3, 3)
    w = torch.tensor([[1.0, 0, 2], [1, 7, 0], [0, 1, 1]]).reshape(1, 1, 3, 3)
    for similarity in ("per_channel", "l2"):  # with one channel both similarities are the same
        y = semantic_difference_convolution(u, v, w, 4.0, similarity)
        assert y[0, 0, 1, 1].item() == pytest.approx(-2.0, abs=1e-6)
        assert y[0, 0, 0, 0].item() == pytest.approx(7.0, abs=1e-6)
    # the centre weight never matters: U(p0) - U(p0) = 0
    w_other_centre = w.clone()
    w_other_centre[..., 1, 1] = -100.0
    assert torch.equal(semantic_difference_convolution(u, v, w_other_centre, 4.0), y)


def test_tiny_maps():
    generator = torch.Generator().manual_seed(3)
    for size in ((1, 1), (1, 4), (3, 1), (2, 2)):
        features = torch.randn(1, 2, *size, generator=generator, dtype=torch.float64)
        guidance = torch.randn(1, 2, *size, generator=generator, dtype=torch.float64)
        weight = torch.randn(2, 1, 3, 3, generator=generator, dtype=torch.float64)
        expected = reference_sdc(features, guidance, weight, 1.0, "per_channel", 2)
        torch.testing.assert_close(semantic_difference_convolution(features, guidance, weight, 1.0, groups=2), expected)


@pytest.mark.parametrize("similarity", ["per_channel", "l2"])
@pytest.mark.parametrize(("out_channels", "groups"), [(3, 1), (6, 2), (4, 4)], ids=["groups1", "groups2", "depthwise"])
def test_the_export_formulation_matches_the_per_pixel_definition_at_every_size(similarity, out_channels, groups):
    """What an export traces (every tap over the whole zero-padded map, masked to the in-image neighbours) is the SDC
    of the definition, maps of 1 pixel on a side included (there the eager version skips taps and slices nothing)."""
    generator = torch.Generator().manual_seed(11 * groups)
    weight = torch.randn(out_channels, 4 // groups, 3, 3, generator=generator, dtype=torch.float64)
    for size in ((1, 1), (1, 4), (3, 1), (2, 2), (5, 7)):
        features = torch.randn(2, 4, *size, generator=generator, dtype=torch.float64)
        guidance = 1.5 * torch.randn(2, 4, *size, generator=generator, dtype=torch.float64)
        expected = reference_sdc(features, guidance, weight, 0.7, similarity, groups)
        got = _semantic_difference_convolution_for_export(
            features, guidance, weight, 1 / 0.7**2, similarity == "per_channel", groups
        )
        assert got.shape == (2, out_channels, *size)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=f"{size}")
        # and the eager version, which the export formulation leaves unchanged
        torch.testing.assert_close(
            semantic_difference_convolution(features, guidance, weight, 0.7, similarity, groups),
            expected,
            rtol=1e-12,
            atol=1e-12,
        )


@pytest.mark.parametrize("similarity", ["per_channel", "l2"])
def test_sdc_gradients(similarity):
    generator = torch.Generator().manual_seed(11)
    tensors = [
        torch.randn(1, 4, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True),
        torch.randn(1, 4, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True),
        torch.randn(4, 2, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True),
    ]
    # the recomputing path (the default); test_sdc_keeps_no_per_tap_tensors_for_backward shows the plain path's
    # gradients are the same
    assert torch.autograd.gradcheck(
        lambda u, v, w: semantic_difference_convolution(u, v, w, 0.7, similarity, 2, recompute=True), tensors
    )


# ----- memory -----------------------------------------------------------------------------------------------------


class LiveBytes(TorchDispatchMode):
    """Peak of the bytes held by the storages that ops allocate while the mode is active (a storage counts from the
    op that makes it until the last Python tensor on it is gone)."""

    def __init__(self):
        super().__init__()
        self.tensors_on = {}  # storage pointer -> [Python tensors alive on it, bytes]
        self.live = self.peak = 0

    def _release(self, key):
        entry = self.tensors_on[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.tensors_on[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                key = tensor.untyped_storage().data_ptr()
                if key not in self.tensors_on:
                    self.tensors_on[key] = [0, tensor.untyped_storage().nbytes()]
                    self.live += self.tensors_on[key][1]
                    self.peak = max(self.peak, self.live)
                self.tensors_on[key][0] += 1
                weakref.finalize(tensor, self._release, key)
        return out


@pytest.mark.parametrize("similarity", ["per_channel", "l2"])
def test_sdc_never_holds_the_nine_shifted_copies(similarity):
    features = torch.randn(1, 64, 256, 256)
    guidance = torch.randn(1, 64, 256, 256)
    weight = torch.randn(64, 1, 3, 3)
    one_map = features.numel() * features.element_size()
    with torch.no_grad(), LiveBytes() as memory:
        out = semantic_difference_convolution(features, guidance, weight, 1.0, similarity, groups=64)
    assert out.shape == features.shape and memory.live == one_map  # only the output stays
    # about 5 maps at the peak (the output and one tap's temporaries); an unfold of U alone would be 9, of U and V 18
    assert memory.peak <= 6 * one_map, memory.peak / one_map
    # the probe itself sees an unfold
    with torch.no_grad(), LiveBytes() as memory:
        unfolded = torch.nn.functional.unfold(features, 3, padding=1)
    assert memory.peak >= 9 * one_map and unfolded.numel() == 9 * features.numel()


def test_sdc_keeps_no_per_tap_tensors_for_backward():
    features = torch.randn(1, 16, 64, 64, requires_grad=True)
    guidance = torch.randn(1, 16, 64, 64, requires_grad=True)
    weight = torch.randn(16, 1, 3, 3, requires_grad=True)
    one_map = features.numel() * features.element_size()
    saved_bytes, grads = {}, {}
    for recompute in (True, False):
        storages = {}

        def pack(tensor, storages=storages):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = semantic_difference_convolution(features, guidance, weight, 1.0, groups=16, recompute=recompute)
        saved_bytes[recompute] = sum(storages.values())
        grads[recompute] = torch.autograd.grad((out * out.detach().sign()).sum(), (features, guidance, weight))
    assert saved_bytes[True] <= 2.1 * one_map  # U and V themselves (and the small weight)
    assert saved_bytes[False] >= 8 * one_map  # what plain autograd would keep: several maps per tap
    for with_recompute, without in zip(grads[True], grads[False]):
        torch.testing.assert_close(with_recompute, without)


# ----- the neck ---------------------------------------------------------------------------------------------------


CHANNELS = (8, 16, 32, 64)
SIZES = ((17, 23), (9, 12), (5, 6), (3, 3))  # Swin-like strides on a 68 x 92 image, rounded up


def pyramid(batch=2, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(batch, channels, *size, generator=generator).requires_grad_(requires_grad)
        for channels, size in zip(CHANNELS, SIZES)
    )


def expected_names(num_levels):
    names = []
    for i in range(num_levels):
        names += [f"levels.{i}.guide_proj.weight", f"levels.{i}.guide_proj.bias", f"levels.{i}.sdc.weight"]
        names += [f"levels.{i}.norm.{name}" for name in ("weight", "bias")]
        names += [f"levels.{i}.fuse.weight", f"levels.{i}.fuse.bias"]
    return names + ["top_guide.weight", "top_guide.bias"]


def test_neck_names_and_identity_at_initialisation():
    torch.manual_seed(0)
    neck = SDNNeck(CHANNELS)
    assert [name for name, _ in neck.named_parameters()] == expected_names(4)
    buffers = [f"levels.{i}.norm.{name}" for i in range(4) for name in ("running_mean", "running_var")]
    buffers += [f"levels.{i}.norm.num_batches_tracked" for i in range(4)]
    assert sorted(name for name, _ in neck.named_buffers()) == sorted(buffers)
    assert neck.levels[2].sdc.weight.shape == (32, 1, 3, 3) and neck.top_guide.weight.shape == (64, 1, 3, 3)
    assert neck.levels[0].guide_proj.weight.shape == (8, 16, 1, 1) and neck.levels[3].guide_proj.weight.shape[1] == 64
    fuse = neck.levels[1].fuse.weight[:, :, 0, 0]
    assert torch.equal(fuse, torch.cat([torch.eye(16), torch.zeros(16, 16)], dim=1))
    features = pyramid()
    for mode in (neck.train, neck.eval):
        mode()
        outputs = neck(features)
        assert isinstance(outputs, tuple) and len(outputs) == 4
        for output, feature in zip(outputs, features):
            assert torch.equal(output, feature)
    assert not torch.equal(neck.levels[0].norm.running_mean, torch.zeros(8))  # the diffusion branch did run
    # full weights and the l2 similarity start as the identity too
    neck = SDNNeck(CHANNELS, lambda_=0.5, similarity="l2", groups=1).eval()
    assert neck.levels[3].sdc.weight.shape == (64, 64, 3, 3) and neck.top_guide.weight.shape == (64, 64, 3, 3)
    assert all(torch.equal(out, feature) for out, feature in zip(neck(features), features))


@pytest.mark.parametrize(
    "options",
    [{}, {"similarity": "l2", "groups": 1}, {"groups": 8, "top_guide_groups": 1, "lambda_": 2.0}],
    ids=["default", "l2-full", "groups8"],
)
def test_neck_shapes_on_an_odd_pyramid(options):
    torch.manual_seed(1)
    neck = SDNNeck(CHANNELS, **options)
    with torch.no_grad():  # move off the identity so the outputs depend on every part
        for level in neck.levels:
            level.fuse.weight.add_(0.1 * torch.randn_like(level.fuse.weight))
    features = pyramid(seed=1)
    outputs = neck(features)
    assert [tuple(out.shape) for out in outputs] == [tuple(feature.shape) for feature in features]
    assert all(not torch.equal(out, feature) for out, feature in zip(outputs, features))
    # single-image inference, a 3x3 top level whose top guide is 2x2, any number of levels
    assert tuple(neck.top_guide(features[-1]).shape) == (2, 64, 2, 2)  # stride 2, padding 1: ceil(3 / 2)
    assert tuple(neck.top_guide(torch.zeros(1, 64, 5, 4)).shape) == (1, 64, 3, 2)
    neck.eval()
    single = tuple(feature[:1] for feature in features)
    assert [out.shape for out in neck(single)] == [feature.shape for feature in single]
    two_levels = SDNNeck(CHANNELS[:2], **{key: value for key, value in options.items() if key != "top_guide_groups"})
    assert [out.shape for out in two_levels(features[:2])] == [feature.shape for feature in features[:2]]


def test_neck_gradients_reach_every_parameter_and_input():
    torch.manual_seed(2)
    neck = SDNNeck(CHANNELS).train()
    features = pyramid(seed=2, requires_grad=True)
    weights = [torch.randn_like(feature) for feature in features]

    def backward():
        neck.zero_grad(set_to_none=True)
        for feature in features:
            feature.grad = None
        loss = sum((out * weight).sum() for out, weight in zip(neck(features), weights))
        loss.backward()

    # at initialisation the Y half of fuse is zero, so only fuse (and the inputs, through the identity) learn at first
    backward()
    for name, parameter in neck.named_parameters():
        if ".fuse." in name:
            assert parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None or not parameter.grad.any(), name
    # once fuse has moved (as after the first update), every parameter gets a gradient
    with torch.no_grad():
        for level in neck.levels:
            level.fuse.weight.add_(0.1 * torch.randn_like(level.fuse.weight))
    backward()
    for name, parameter in neck.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        grad = parameter.grad
        if name.endswith("sdc.weight"):  # the centre tap multiplies U(p0) - U(p0) = 0
            assert not grad[..., 1, 1].any(), name
            grad = grad.flatten(2)[..., [0, 1, 2, 3, 5, 6, 7, 8]]
            assert (grad != 0).all(), name  # every off-centre weight of every channel
        else:
            assert grad.abs().sum() > 0, name
    for feature in features:
        assert torch.isfinite(feature.grad).all() and (feature.grad != 0).any()


def test_level_alone_and_argument_checks():
    level = SDNLevel(8, 16, groups=8)
    features, guidance = torch.randn(2, 8, 7, 5), torch.randn(2, 16, 4, 3)
    assert torch.equal(level(features, guidance), features)  # a level starts as the identity too
    with pytest.raises(ValueError, match="similarity"):
        SDNNeck(CHANNELS, similarity="cosine")
    with pytest.raises(ValueError, match="lambda_"):
        SDNNeck(CHANNELS, lambda_=0.0)
    with pytest.raises(ValueError, match="groups"):
        SDNNeck(CHANNELS, groups=3)
    with pytest.raises(ValueError, match="expected 4 feature maps"):
        SDNNeck(CHANNELS)(pyramid()[:3])
    with pytest.raises(ValueError, match="feature map 1"):
        SDNNeck(CHANNELS)((pyramid()[0], pyramid()[0], *pyramid()[2:]))
    with pytest.raises(ValueError, match="weight must be"):
        semantic_difference_convolution(features, features, torch.randn(8, 3, 3, 3), 1.0, groups=2)


def test_the_convolution_names_each_bad_argument():
    """Each check on its own: a wrong rank of either input, a batch or a size of the guidance that differs alone, a
    lambda of 0 (a division by zero) and groups dividing only one of the widths."""
    features, weight = torch.randn(2, 8, 7, 5), torch.randn(8, 8, 3, 3)
    guidance = torch.randn(2, 16, 7, 5)
    for bad_features, bad_guidance in ((features[0], guidance), (features, guidance[0])):
        with pytest.raises(ValueError, match=r"features and guidance must be \(B, C, H, W\)"):
            semantic_difference_convolution(bad_features, bad_guidance, weight, 1.0, similarity="l2")
    for bad_guidance in (guidance[:1], guidance[..., :4]):
        with pytest.raises(
            ValueError, match=re.escape(f"guidance {tuple(bad_guidance.shape)} must match the features (2, 8, 7, 5)")
        ):
            semantic_difference_convolution(features, bad_guidance, weight, 1.0, similarity="l2")
    with pytest.raises(ValueError, match=r"lambda_ must be > 0; got 0\.0"):
        semantic_difference_convolution(features, guidance, weight, 0.0, similarity="l2")
    for in_channels, out_channels in ((8, 6), (6, 8)):
        with pytest.raises(
            ValueError, match=rf"groups=4 must divide in_channels={in_channels} and out_channels={out_channels}"
        ):
            SemanticDifferenceConvolution(in_channels, out_channels, groups=4)


def test_parameter_counts_for_swin_b_channels():
    with torch.device("meta"):
        default = SDNNeck((128, 256, 512, 1024))
        full = SDNNeck((128, 256, 512, 1024), groups=1)
    assert sum(parameter.numel() for parameter in default.parameters()) == 4_557_184
    assert sum(parameter.numel() for parameter in full.parameters()) == 26_501_632  # the "26.5 M" of the notes


def test_init_with_transformers_initialization_keeps_loaded_weights():
    transformers_init = pytest.importorskip("transformers.initialization")
    neck = SDNNeck(CHANNELS)
    loaded = neck.levels[0].fuse.weight
    with torch.no_grad():
        loaded.fill_(0.25)
    loaded._is_hf_initialized = True
    init_sdn_weights(neck, init=transformers_init)
    assert (loaded == 0.25).all()  # left alone, as transformers does for weights read from a checkpoint
    assert torch.equal(neck.levels[1].fuse.weight[:, :16, 0, 0], torch.eye(16))


# ---------------------------------------------------------------------------------------------------------------
# the neck inside the segmentation families (config.use_sdn_neck)
# ---------------------------------------------------------------------------------------------------------------


def family_configs():
    from test_modeling_pale import tiny_pale_config
    from test_modeling_semask_swin import tiny_config
    from test_modeling_vwformer import tiny_swin, tiny_vwformer_config

    return {
        "semask-fpn": tiny_config,
        "pale-upernet": tiny_pale_config,
        "vwformer": lambda: tiny_vwformer_config(tiny_swin()),
    }


@pytest.mark.parametrize("family", ["semask-fpn", "pale-upernet", "vwformer"])
def test_the_neck_is_off_by_default_and_starts_as_the_identity_in_every_family(family):
    """Off: no neck module and no ``neck.`` key (every existing checkpoint and converter keeps its keys). On: the
    neck's keys are added, everything else loads from the neck-off model, and at initialisation the logits equal the
    neck-off model's exactly (the neck starts as the identity, also through transformers' weight init)."""
    from transformers import AutoModelForSemanticSegmentation

    import hf_semseg  # noqa: F401  (registers the Auto classes)

    config = family_configs()[family]()
    assert config.use_sdn_neck is False
    torch.manual_seed(0)
    plain = AutoModelForSemanticSegmentation.from_config(config).eval()
    assert plain.neck is None and not any(key.startswith("neck.") for key in plain.state_dict())
    config.use_sdn_neck = True
    torch.manual_seed(1)
    with_neck = AutoModelForSemanticSegmentation.from_config(config).eval()
    neck_keys = {key for key in with_neck.state_dict() if key.startswith("neck.")}
    assert set(with_neck.state_dict()) - neck_keys == set(plain.state_dict())
    assert {"neck.top_guide.weight", "neck.levels.0.sdc.weight", "neck.levels.3.fuse.bias"} <= neck_keys
    missing, unexpected = with_neck.load_state_dict(plain.state_dict(), strict=False)
    # (BatchNorm does not report a missing num_batches_tracked)
    assert set(missing) == {key for key in neck_keys if not key.endswith("num_batches_tracked")} and not unexpected
    pixel_values = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        neck_output = with_neck.neck(with_neck.backbone(pixel_values).feature_maps)
        for before, after in zip(plain.backbone(pixel_values).feature_maps, neck_output):
            assert torch.equal(before, after)  # the neck itself: the identity, exactly
        # the logits to float rounding, relative to the largest logit: the head's convolutions see the neck's
        # contiguous outputs instead of the backbone's strided maps (measured 4e-7 of the largest logit, Pale)
        expected = plain(pixel_values).logits
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(with_neck(pixel_values).logits, expected, atol=2e-6 * scale, rtol=0)


def test_neck_options_are_checked_by_every_config():
    from huggingface_hub.errors import StrictDataclassClassValidationError as Invalid

    from hf_semseg import PaleConfig, SeMaskSwinConfig, VWFormerConfig

    for config_class in (SeMaskSwinConfig, PaleConfig, VWFormerConfig):
        with pytest.raises(Invalid, match=rf"{config_class.__name__}.sdn_similarity must be one of"):
            config_class(use_sdn_neck=True, sdn_similarity="cosine")
        with pytest.raises(Invalid, match=r"sdn_lambda must be positive, got 0"):
            config_class(sdn_lambda=0)
        with pytest.raises(Invalid, match=r"sdn_groups must be 'depthwise' or a positive number of groups"):
            config_class(sdn_groups="grouped")


def test_groups_that_do_not_divide_the_backbone_widths_are_named_as_the_config_names_them():
    """``sdn_groups=3`` passes the config (which does not know the widths) and failed at the model's construction with
    "groups must be ... dividing 16", naming neither the config nor the option."""
    from hf_semseg import SeMaskSwinConfig, SeMaskSwinForSemanticSegmentation

    from model_suite import FOUR_STAGES, tiny_semask_swin_kwargs

    config = SeMaskSwinConfig(**tiny_semask_swin_kwargs(), out_features=FOUR_STAGES, use_sdn_neck=True, sdn_groups=3)
    with pytest.raises(ValueError) as error:
        SeMaskSwinForSemanticSegmentation(config)
    assert str(error.value) == (
        "SeMaskSwinConfig: the SDN neck over levels of [16, 32, 64, 128] channels (sdn_groups=3, sdn_width=None): "
        "groups must be 'depthwise' or a positive int dividing 16; got 3"
    )


def test_a_saved_model_loads_with_the_neck_switched_on_unchanged(tmp_path):
    """What the model cards promise: ``from_pretrained(folder, use_sdn_neck=True)`` adds the neck (its weights
    initialised by transformers' loading as the identity) and the model computes what it did."""
    from test_modeling_semask_swin import tiny_config
    from transformers import AutoModelForSemanticSegmentation

    import hf_semseg

    torch.manual_seed(0)
    model = hf_semseg.SeMaskSwinForSemanticSegmentation(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    with_neck = AutoModelForSemanticSegmentation.from_pretrained(tmp_path, use_sdn_neck=True).eval()
    assert type(with_neck.neck).__name__ == "SDNNeck"
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(pixel_values).logits
        torch.testing.assert_close(with_neck(pixel_values).logits, expected, atol=2e-6 * expected.abs().max(), rtol=0)


def test_a_narrow_diffusion_width_projects_every_level_and_still_starts_as_the_identity():
    """``width`` (``config.sdn_width``): each level is projected to D channels (``input_proj``) before the diffusion,
    and ``fuse`` maps C + D back to C: cheaper on wide levels, still the identity at initialisation, and every part
    trains."""
    channels = (8, 16, 32, 64)
    neck = SDNNeck(channels, width=8)
    names = {name for name, _ in neck.named_parameters()}
    assert {"levels.3.input_proj.weight", "levels.3.input_proj.bias"} <= names
    assert neck.levels[3].fuse.weight.shape == (64, 64 + 8, 1, 1) and neck.levels[3].sdc.weight.shape == (8, 1, 3, 3)
    full = sum(p.numel() for p in SDNNeck(channels).parameters())
    assert sum(p.numel() for p in neck.parameters()) < full
    generator = torch.Generator().manual_seed(0)
    sizes = ((17, 23), (9, 12), (5, 6), (3, 3))
    features = [torch.randn(2, c, h, w, generator=generator, requires_grad=True) for c, (h, w) in zip(channels, sizes)]
    for before, after in zip(features, neck(features)):
        assert torch.equal(before, after)
    with torch.no_grad():
        for level in neck.levels:
            level.fuse.weight.add_(0.05 * torch.randn(level.fuse.weight.shape, generator=generator))
    sum(output.square().mean() for output in neck(features)).backward()
    for name, parameter in neck.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="width must be None or a positive number of channels; got 0"):
        SDNNeck(channels, width=0)


def test_the_width_option_in_a_family_config():
    from huggingface_hub.errors import StrictDataclassClassValidationError as Invalid

    from hf_semseg import VWFormerConfig, VWFormerForSemanticSegmentation

    config = family_configs()["vwformer"]()
    config.use_sdn_neck, config.sdn_width = True, 8
    model = VWFormerForSemanticSegmentation(config)
    assert all(level.input_proj.out_channels == 8 for level in model.neck.levels)
    with pytest.raises(Invalid, match=r"VWFormerConfig.sdn_width must be None or a positive number of channels"):
        VWFormerConfig(sdn_width=-1)
