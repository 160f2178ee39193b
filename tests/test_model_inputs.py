"""Inputs of every model class: a wrong input is a ``ValueError`` naming the value, raised before any module runs,
and every input size from 1x1 up gives finite logits of the family's size (and, in training, a finite loss whose
backward works). Tiny configs, one model per family and VWFormer backbone, built once."""

import copy
import functools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_semseg import (
    PaleConfig,
    PaleForImageClassification,
    PaleForSemanticSegmentation,
    SeMaskMask2FormerConfig,
    SeMaskMask2FormerForSemanticSegmentation,
    SeMaskSwinConfig,
    SeMaskSwinForSemanticSegmentation,
    VWFormerConfig,
    VWFormerForSemanticSegmentation,
    VWMask2FormerForSemanticSegmentation,
)
from hf_semseg.models.modeling_semask_mask2former import SeMaskMask2FormerGroupNorm
from hf_semseg.models.modeling_vw_pixel_decoder import vw_padded_side

from model_suite import (
    FOUR_STAGES,
    tiny_label_kwargs,
    tiny_mask2former_kwargs,
    tiny_pale_kwargs,
    tiny_semask_swin_kwargs,
    tiny_vw_mask2former_config,
    tiny_vwformer_backbone_config,
    tiny_vwformer_kwargs,
)


def stride4(side: int) -> int:
    return -(-side // 4)


def convnext_stride4(side: int) -> int:
    return max(side // 4, 1)  # the unpadded 4x4 stem drops the remainder; a padded side keeps at least 1


def mask2former_stride4(side: int) -> int:
    return 8 * math.ceil(side / 32)  # logits cover the input padded to a multiple of 32


def vw_stride4(side: int) -> int:
    return vw_padded_side(side, 64) // 4  # logits cover the input padded to a multiple of 64, at least 128


def vwformer(backbone: str, **overrides):
    return lambda: VWFormerForSemanticSegmentation(
        VWFormerConfig(backbone_config=tiny_vwformer_backbone_config(backbone), **tiny_vwformer_kwargs(**overrides))
    )


#: name -> (builder, name of the config value that gives the channels, logits side for an input side; None for
#: image classification)
MODELS = {
    "semask_fpn": (
        lambda: SeMaskSwinForSemanticSegmentation(
            SeMaskSwinConfig(
                **tiny_semask_swin_kwargs(depths=[1, 1, 1, 1], decoder_hidden_size=16), out_features=FOUR_STAGES
            )
        ),
        "config.num_channels",
        stride4,
    ),
    "pale_upernet": (
        lambda: PaleForSemanticSegmentation(
            PaleConfig(
                **tiny_pale_kwargs(
                    depths=[1, 1, 1, 1],
                    decoder_hidden_size=16,
                    auxiliary_channels=8,
                    pool_scales=[1, 2],
                    **tiny_label_kwargs(),
                ),
                out_features=FOUR_STAGES,
            )
        ),
        "config.num_channels",
        stride4,
    ),
    "pale_classifier": (
        lambda: PaleForImageClassification(PaleConfig(**tiny_pale_kwargs(depths=[1, 1, 1, 1], **tiny_label_kwargs()))),
        "config.num_channels",
        None,
    ),
    "vwformer_swin": (vwformer("swin"), "config.backbone_config.num_channels", stride4),
    "vwformer_convnext": (vwformer("convnext"), "config.backbone_config.num_channels", convnext_stride4),
    "vwformer_convnext_city": (
        vwformer("convnext", head_type="vw_city", use_short_cut=False, use_auxiliary_head=True),
        "config.backbone_config.num_channels",
        convnext_stride4,
    ),
    "vwformer_mit": (vwformer("mit", use_auxiliary_head=True), "config.backbone_config.num_channels", stride4),
    "vwformer_semask_swin": (vwformer("semask_swin"), "config.backbone_config.num_channels", stride4),
    "vwformer_pale": (vwformer("pale"), "config.backbone_config.num_channels", stride4),
    "semask_mask2former": (
        lambda: SeMaskMask2FormerForSemanticSegmentation(
            SeMaskMask2FormerConfig(
                **tiny_mask2former_kwargs(
                    backbone_config=SeMaskSwinConfig(
                        **tiny_semask_swin_kwargs(depths=[1, 1, 1, 1]), out_features=FOUR_STAGES
                    ),
                    decoder_layers=2,
                    train_num_points=64,
                )
            )
        ),
        "config.backbone_config.num_channels",
        mask2former_stride4,
    ),
    "vw_mask2former": (
        lambda: VWMask2FormerForSemanticSegmentation(tiny_vw_mask2former_config(train_num_points=64)),
        "config.backbone_config.num_channels",
        vw_stride4,
    ),
}

SIZES = [(1, 1), (2, 2), (16, 16), (17, 31), (1, 300)]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread while this module runs: on these tiny models thread hand-offs cost more than they save
    (12 s against 50-90 s for the module on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def model(name: str):
    torch.manual_seed(0)
    return MODELS[name][0]()


def inputs(name: str, batch_size: int, height: int, width: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, height, width, generator=generator)
    if MODELS[name][2] is None:
        labels = torch.randint(0, 4, (batch_size,), generator=generator)
    else:
        labels = torch.randint(0, 4, (batch_size, height, width), generator=generator)
    return pixel_values, labels


def expected_logits_shape(name: str, batch_size: int, height: int, width: int) -> tuple[int, ...]:
    side = MODELS[name][2]
    if side is None:
        return (batch_size, 4)
    return (batch_size, 4, side(height), side(width))


@pytest.fixture
def no_module_runs():
    """Records every submodule a model runs; the test asserts that the list is empty."""
    handles, calls = [], []

    def watch(model):
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(lambda m, args, name=name: calls.append(name)))
        return calls

    yield watch
    for handle in handles:
        handle.remove()


# ---------------------------------------------------------------------------------------------------------------
# wrong inputs
# ---------------------------------------------------------------------------------------------------------------


def bad_inputs(name: str):
    """(case id, pixel_values, labels, message pattern) of every wrong input."""
    channels_name = MODELS[name][1].replace(".", r"\.")
    pixel_values, labels = inputs(name, 3, 32, 32)
    cases = [
        (
            "one_channel",
            pixel_values[:, :1],
            None,
            rf"pixel_values has 1 channels; this model takes 3 \({channels_name}\)",
        ),
        (
            "four_channels",
            torch.cat([pixel_values, pixel_values[:, :1]], dim=1),
            None,
            rf"pixel_values has 4 channels; this model takes 3 \({channels_name}\)",
        ),
        ("no_batch_axis", pixel_values[0], None, r"pixel_values has shape \(3, 32, 32\).*pixel_values\[None\]"),
        ("five_axes", pixel_values[None], None, r"pixel_values has shape \(1, 3, 3, 32, 32\)"),
        ("empty_batch", pixel_values[:0], None, "pixel_values has batch size 0: pass at least one image"),
        ("empty_image", pixel_values[:, :, :0], None, "pixel_values has images of size 0x32"),
        ("uint8", pixel_values.to(torch.uint8), None, "pixel_values has dtype torch.uint8"),
        (
            "float64",
            pixel_values.double(),
            None,
            r"pixel_values has dtype torch.float64 but \w+'s weights are torch.float32: cast the input",
        ),
        ("bfloat16", pixel_values.bfloat16(), None, r"pixel_values has dtype torch.bfloat16 but \w+'s weights"),
        ("list", pixel_values.tolist(), None, "pixel_values must be a torch.Tensor; got list"),
        ("labels_of_two", pixel_values, labels[:2], "labels has batch size 2 but pixel_values has 3"),
        (
            "labels_of_four",
            pixel_values,
            torch.cat([labels, labels[:1]]),
            "labels has batch size 4 but pixel_values has 3",
        ),
        ("labels_list", pixel_values, labels.tolist(), "labels must be a torch.Tensor; got list"),
    ]
    if MODELS[name][2] is not None:
        cases += [
            ("labels_without_batch_axis", pixel_values[:1], labels[0], r"labels must have shape .*; got \(32, 32\)"),
            ("labels_with_channels", pixel_values, labels[:, None].expand(-1, 2, -1, -1), r"got \(3, 2, 32, 32\)"),
            ("empty_label_map", pixel_values, labels[:, :0], "labels has an empty label map of size 0x32"),
            # a cast would truncate them: 0.9 -> 0
            ("float_labels", pixel_values, labels + 0.9, "labels has dtype torch.float32; label maps hold class"),
        ]
    return cases


BAD_CASES = [(name, case[0]) for name in MODELS for case in bad_inputs(name)]


@pytest.mark.parametrize("name, case", BAD_CASES, ids=[f"{name}-{case}" for name, case in BAD_CASES])
def test_a_wrong_input_is_named_before_any_module_runs(name, case, no_module_runs):
    _, pixel_values, labels, message = next(c for c in bad_inputs(name) if c[0] == case)
    network = model(name).eval()
    calls = no_module_runs(network)
    with pytest.raises(ValueError, match=message):
        network(pixel_values, labels=labels)
    assert calls == [], f"modules ran before the error: {calls[:5]}"


def test_labels_of_another_size_are_kept_where_the_loss_resizes_the_logits():
    """Label maps at another resolution than the input are legitimate for the heads whose loss resizes the logits to
    the labels (and a channel axis of 1 is dropped); SeMask-Mask2Former pads the labels like its input, so only
    the input's size or its padded size is taken: a smaller map would supervise image pixels with the wrong labels,
    one between the two sizes the zero padding with classes."""
    pixel_values, _ = inputs("semask_fpn", 2, 32, 48)
    labels = torch.randint(0, 4, (2, 1, 64, 96))
    output = model("semask_fpn").eval()(pixel_values, labels=labels)
    assert torch.isfinite(output.loss)
    network = model("semask_mask2former").eval()
    expected = r"must have the input's size \(32, 48\) or its padded size \(32, 64\)"
    for size in ((16, 48), (32, 56), (48, 64)):
        with pytest.raises(ValueError, match=rf"labels of size \({size[0]}, {size[1]}\) for an input of .*{expected}"):
            network(pixel_values, labels=labels[:, 0, : size[0], : size[1]])
    padded_labels = F.pad(labels[:, 0, :32, :48], (0, 16), value=255)  # the processor's padding to 32x64
    loss = network(pixel_values, labels=padded_labels).loss
    assert torch.isfinite(loss)
    torch.testing.assert_close(network(pixel_values, labels=labels[:, 0, :32, :48]).loss, loss, rtol=0, atol=0)


def test_pixel_values_of_another_dtype_are_taken_under_autocast_and_by_a_model_of_that_dtype():
    """The dtype check refuses only what the first convolution would: under autocast float32 and half pixel values
    run on float32 weights (autocast casts both; float64 it leaves alone, so that stays refused), and a model cast to
    bfloat16 takes bfloat16 pixel values (the same logits as float32 ones under autocast)."""
    network = copy.deepcopy(model("semask_fpn")).eval()  # cast to bfloat16 below: not the shared instance
    pixel_values, _ = inputs("semask_fpn", 1, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_logits = network(pixel_values).logits
        torch.testing.assert_close(network(pixel_values.half()).logits, autocast_logits, atol=0.1, rtol=0.1)
        with pytest.raises(ValueError, match="pixel_values has dtype torch.float64 .* not float64"):
            network(pixel_values.double())
    assert autocast_logits.dtype == torch.bfloat16 and torch.isfinite(autocast_logits).all()
    with torch.no_grad():
        cast_logits = network.to(torch.bfloat16)(pixel_values.bfloat16()).logits
    assert cast_logits.dtype == torch.bfloat16
    torch.testing.assert_close(cast_logits.float(), autocast_logits.float(), atol=0.1, rtol=0.1)


# ---------------------------------------------------------------------------------------------------------------
# input sizes
# ---------------------------------------------------------------------------------------------------------------

SIZE_CASES = [(name, size) for name in MODELS for size in SIZES]


@pytest.mark.parametrize("name, size", SIZE_CASES, ids=[f"{name}-{size[0]}x{size[1]}" for name, size in SIZE_CASES])
def test_every_size_gives_logits_and_a_trainable_loss(name, size):
    """One image in eval mode (SeMask-Mask2Former's GroupNorm meets a single value per group there), two in training
    mode with labels (one image would leave some BatchNorms a single value: see the next test)."""
    network = model(name)
    height, width = size
    pixel_values, labels = inputs(name, 1, height, width)
    with torch.no_grad():
        logits = network.eval()(pixel_values).logits
    assert logits.shape == expected_logits_shape(name, 1, height, width)
    assert torch.isfinite(logits).all()

    pixel_values, labels = inputs(name, 2, height, width, seed=1)
    network.train()
    try:
        output = network(pixel_values, labels=labels)
        assert output.logits.shape == expected_logits_shape(name, 2, height, width)
        assert torch.isfinite(output.logits).all() and torch.isfinite(output.loss)
        output.loss.backward()
        gradients = [p.grad for p in network.parameters() if p.grad is not None]
        assert gradients and all(torch.isfinite(g).all() for g in gradients)
    finally:
        network.zero_grad(set_to_none=True)
        network.eval()


SINGLE_IMAGE_TRAINING = [
    # (model, size, refusal pattern or None where one image trains)
    ("semask_fpn", (32, 32), r"a single image must be at least 33 px on one side"),
    ("semask_fpn", (1, 33), None),
    ("pale_classifier", (17, 31), r"stride-32 map is 1x1.*at least 33 px on one side"),
    ("pale_classifier", (33, 1), None),
    ("pale_upernet", (64, 64), r"needs at least 2 images per batch \(got 1\)"),
    ("vwformer_swin", (64, 64), r"needs at least 2 images per batch \(got 1\)"),
    ("vwformer_convnext_city", (63, 40), r"image of 63x40: its stride-32 map is 1x1.*at least 64 px on one side"),
    ("vwformer_convnext_city", (64, 1), None),
    ("semask_mask2former", (1, 1), None),
    ("semask_mask2former", (17, 31), None),
]


@pytest.mark.parametrize("name, size, message", SINGLE_IMAGE_TRAINING)
def test_one_image_in_training_mode_trains_or_is_refused_with_the_minimum_size(name, size, message, no_module_runs):
    """A BatchNorm in training mode cannot normalise a single value per channel (its batch statistics do not
    exist): a batch of one image that would leave it one is refused before any module runs, naming the minimum size
    (or the minimum batch, for the heads that normalise a globally pooled map); any other single image trains."""
    network = model(name).train()
    pixel_values, labels = inputs(name, 1, *size)
    try:
        if message is None:
            loss = network(pixel_values, labels=labels).loss
            assert torch.isfinite(loss)
            loss.backward()
        else:
            calls = no_module_runs(network)
            with pytest.raises(ValueError, match=message):
                network(pixel_values, labels=labels)
            assert calls == []
    finally:
        network.zero_grad(set_to_none=True)
        network.eval()


def test_synchronised_batch_norm_is_not_refused_one_image():
    """With BatchNorms synchronised over processes one image per process is legitimate: the check leaves them to
    the synchronised layer."""
    from hf_semseg.models.modeling_utils_segmentation import check_batch_norm_batch

    network = model("vwformer_swin").train()
    try:
        with pytest.raises(ValueError, match="needs at least 2 images per batch"):
            check_batch_norm_batch(network, 1, (1, 1), 0, (64, 64))
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(MODELS["vwformer_swin"][0]()).train()
        check_batch_norm_batch(converted, 1, (1, 1), 0, (64, 64))  # no plain BatchNorm left
    finally:
        network.eval()


# ---------------------------------------------------------------------------------------------------------------
# padding is invisible: the padded-then-cropped result is the one of the padded input, and a size the backbone
# runs on is not padded
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, size, padded_size, auxiliary_size",
    [
        ("vwformer_convnext", (16, 24), (32, 32), None),  # ConvNeXt runs from 32 px
        # the stride-16 auxiliary logits: 300 // 16 columns (ConvNeXt drops remainders), at least 1 row
        ("vwformer_convnext_city", (1, 300), (32, 300), (1, 18)),
        # MiT's 8x8 key reduction of the stride-4 map runs from 29 px; its maps are ceil(side / stride)
        ("vwformer_mit", (17, 31), (29, 31), (2, 2)),
    ],
)
def test_a_small_input_gives_the_cropped_result_of_its_zero_padded_input(name, size, padded_size, auxiliary_size):
    network = model(name).eval()
    pixel_values, _ = inputs(name, 2, *size)
    padded = F.pad(pixel_values, (0, padded_size[1] - size[1], 0, padded_size[0] - size[0]))
    with torch.no_grad():
        output = network(pixel_values)
        reference = network(padded)  # a size the backbone runs on: not padded further
    height, width = output.logits.shape[-2:]
    assert (height, width) == expected_logits_shape(name, 2, *size)[-2:]
    assert reference.logits.shape[-2:] != (height, width)
    torch.testing.assert_close(output.logits, reference.logits[..., :height, :width], atol=0, rtol=0)
    if auxiliary_size is None:
        assert output.auxiliary_logits is None
    else:
        assert output.auxiliary_logits.shape[-2:] == auxiliary_size
        expected = reference.auxiliary_logits[..., : auxiliary_size[0], : auxiliary_size[1]]
        torch.testing.assert_close(output.auxiliary_logits, expected, atol=0, rtol=0)


@pytest.mark.parametrize("name, size", [("vwformer_convnext_city", (64, 96)), ("vwformer_mit", (29, 29))])
def test_a_size_the_backbone_runs_on_is_the_plain_backbone_and_head(name, size):
    """Where the original runs (here the smallest sizes), the model computes exactly backbone + head, unpadded."""
    network = model(name).eval()
    pixel_values, _ = inputs(name, 2, *size)
    with torch.no_grad():
        features, _, _ = network.backbone_features(pixel_values)
        expected = network.decode_head(features)
        output = network(pixel_values)
    torch.testing.assert_close(output.logits, expected, atol=0, rtol=0)
    torch.testing.assert_close(output.auxiliary_logits, network.auxiliary_head(features), atol=0, rtol=0)


def test_mask2former_group_norm_of_single_values_is_the_one_of_a_larger_batch():
    """torch's GroupNorm computes a group of one value (the bias) for each image of a batch of two, and refuses it
    for one image; SeMask-Mask2Former's GroupNorm gives each single image the batch's result, and equals
    ``nn.GroupNorm`` on every input torch runs."""
    torch.manual_seed(0)
    norm = SeMaskMask2FormerGroupNorm(4, 4)
    reference = nn.GroupNorm(4, 4)
    with torch.no_grad():
        for module in (norm, reference):
            module.weight.copy_(torch.tensor([0.5, -1.0, 2.0, 1.5]))
            module.bias.copy_(torch.tensor([0.1, 0.2, -0.3, 0.4]))
    pair = torch.randn(2, 4, 1, 1)
    torch.testing.assert_close(norm(pair), reference(pair), atol=0, rtol=0)
    singles = torch.cat([norm(pair[:1]), norm(pair[1:])])
    torch.testing.assert_close(singles, norm.bias.view(1, 4, 1, 1).expand(2, -1, -1, -1), atol=0, rtol=0)
    # torch computes x * rstd - mean * rstd with rstd = eps ** -0.5 (316): its zero carries that rounding
    torch.testing.assert_close(singles, reference(pair), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        reference(pair[:1])  # what the pixel decoder met on one image of at most 32x32 px
    for shape in [(1, 4, 3, 5), (3, 4, 2, 1)]:
        values = torch.randn(shape)
        torch.testing.assert_close(norm(values), reference(values), atol=0, rtol=0)

    network = model("semask_mask2former").eval()
    pixel_values, _ = inputs("semask_mask2former", 2, 16, 16)
    with torch.no_grad():
        batched = network(pixel_values).logits  # torch's GroupNorm runs on the batch of two
        singles = torch.cat([network(pixel_values[i : i + 1]).logits for i in range(2)])
    torch.testing.assert_close(singles, batched, atol=1e-5, rtol=1e-5)


def test_label_values_and_shapes_at_their_bounds():
    """``[0, num_labels)`` and the ignore index are labels; -1 and ``num_labels`` are not. Image-classification
    labels (``label_maps=False``) may be one class id for a batch of one image (a 0-d tensor)."""
    from hf_semseg.models.modeling_utils_segmentation import check_pixel_values, check_segmentation_labels

    labels = torch.tensor([[[0, 3], [255, 2]]])
    assert torch.equal(check_segmentation_labels(labels.to(torch.uint8), 4, 255), labels)
    assert check_segmentation_labels(labels, 4, 255).dtype == torch.int64
    for value in (4, -1):
        bad = labels.clone()
        bad[0, 0, 0] = value
        with pytest.raises(
            ValueError, match=rf"^labels contain values \[{value}\] outside \[0, 3\] and the ignore index"
        ):
            check_segmentation_labels(bad, 4, 255)
    pixel_values = torch.zeros(1, 3, 2, 2)
    check_pixel_values(pixel_values, 3, torch.tensor(2), label_maps=False)
    check_pixel_values(pixel_values, 3, torch.tensor([2]), label_maps=False)
    with pytest.raises(ValueError, match=r"labels has batch size 2 but pixel_values has 1"):
        check_pixel_values(pixel_values, 3, torch.tensor([2, 1]), label_maps=False)


def test_batch_norm_check_refuses_only_a_one_pixel_map():
    """A single image is refused in training only where the BatchNorm's smallest map is 1 x 1: 3 x 2, 1 x 2 and
    2 x 1 maps train."""
    from hf_semseg.models.modeling_utils_segmentation import check_batch_norm_batch

    network = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    for smallest_map in ((3, 2), (1, 2), (2, 1)):
        check_batch_norm_batch(network, 1, smallest_map, 32, (32 * smallest_map[0], 32 * smallest_map[1]))
    with pytest.raises(
        ValueError, match=r"cannot take a batch of 1 image of 32x32: its stride-32 map is 1x1, .* 33 px"
    ):
        check_batch_norm_batch(network, 1, (1, 1), 32, (32, 32))
    check_batch_norm_batch(network, 2, (1, 1), 32, (32, 32))
    check_batch_norm_batch(network.eval(), 1, (1, 1), 32, (32, 32))


def test_hidden_state_indices_at_their_bounds():
    """transformers' ``output_hidden_states=[...]``: indices from ``-count`` to ``count - 1`` (negative ones from the
    end), the chosen states in place and None elsewhere; ``True`` / ``False`` keep them all; any other index, a bool
    or a non-integer in the list, is refused naming it."""
    from hf_semseg.models.modeling_utils_segmentation import select_hidden_states

    states = ("s0", "s1", "s2")
    assert select_hidden_states(states, True) == states
    assert select_hidden_states(states, [0, -1]) == ("s0", None, "s2")
    assert select_hidden_states(states, (-3, 2)) == ("s0", None, "s2")
    assert select_hidden_states(states, [1, -2]) == (None, "s1", None)
    assert select_hidden_states(states, []) == (None, None, None)
    for index in (3, -4, True, 1.0, "1"):
        with pytest.raises(
            ValueError, match=rf"^output_hidden_states index {re.escape(repr(index))} is not one of the 3"
        ):
            select_hidden_states(states, [0, index])
