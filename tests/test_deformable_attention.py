"""Multi-scale deformable attention by gathering (``hf_semseg/models/modeling_deformable_attention.py``): the
``embedding_bag`` form against transformers' ``grid_sample`` form (float64, float32, non-finite locations), the
module's dispatch (CPU inference gathers; training, tracing keep transformers' forward), and the decoders that use it
(same state-dict keys, oneDNN dense layers)."""

from unittest import mock

import pytest
import torch
from torch import nn
from transformers.models.mask2former import modeling_mask2former
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    multi_scale_deformable_attention,
)

from hf_semseg import SeMaskMask2FormerConfig, SeMaskMask2FormerModel, VWMask2FormerModel
from hf_semseg.models import modeling_deformable_attention
from hf_semseg.models.modeling_deformable_attention import (
    GatheringMultiscaleDeformableAttention,
    multi_scale_deformable_attention_by_gathering,
    use_cpu_deformable_encoder,
)
from hf_semseg.models.modeling_fapn import SeMaskMSFaPNPixelDecoder
from hf_semseg.models.modeling_linear import OneDNNLinear

from model_suite import tiny_mask2former_kwargs, tiny_semask_swin_kwargs, tiny_vw_mask2former_config


def random_operands(spatial_shapes, batch=2, queries=7, heads=2, head_dim=4, points=3, dtype=torch.float64, seed=0):
    """value, sampling locations (inside, across the border, far outside and exactly on pixel centres and edges)
    and softmaxed attention weights."""
    generator = torch.Generator().manual_seed(seed)
    levels = len(spatial_shapes)
    tokens = sum(height * width for height, width in spatial_shapes)
    value = torch.randn(batch, tokens, heads, head_dim, generator=generator, dtype=dtype)
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=generator, dtype=dtype) * 1.8 - 0.4
    sizes = torch.tensor([[width, height] for height, width in spatial_shapes], dtype=dtype)[:, None, :]
    # some points exactly on a pixel centre, on the map's edge, one pixel past it and far away
    locations[:, 0] = (locations[:, 0] * sizes).round() / sizes
    locations[:, 1] = ((locations[:, 1] * sizes - 0.5).round() + 0.5) / sizes
    locations[:, 2, :, :, 0] = torch.tensor([-1 / 2, 1 + 1 / 3], dtype=dtype)
    locations[:, 3] = torch.tensor([-7.0, 9.0], dtype=dtype)
    weights = torch.randn(batch, queries, heads, levels * points, generator=generator, dtype=dtype).softmax(-1)
    return value, locations, weights.view(batch, queries, heads, levels, points)


@pytest.mark.parametrize(
    "spatial_shapes",
    [[(5, 6), (3, 3), (2, 1)], [(1, 7)], [(6, 1), (1, 1)], [(9, 4), (4, 9), (1, 3), (3, 1)]],
    ids=["three-levels", "one-row", "one-column-and-a-pixel", "four-levels"],
)
def test_gathering_equals_the_grid_sample_form_in_float64(spatial_shapes):
    operands = random_operands(spatial_shapes)
    expected = multi_scale_deformable_attention(operands[0], spatial_shapes, *operands[1:])
    output = multi_scale_deformable_attention_by_gathering(operands[0], spatial_shapes, *operands[1:])
    assert output.shape == expected.shape == (2, 7, 8)
    assert (output - expected).abs().max() < 1e-12


def test_gathering_in_float32_is_as_close_to_float64_as_the_grid_sample_form():
    spatial_shapes = [(40, 40), (20, 20), (10, 10)]
    value, locations, weights = random_operands(spatial_shapes, queries=300, heads=4, head_dim=8, seed=1)
    exact = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
    single = [tensor.float() for tensor in (value, locations, weights)]
    grid_sample_error = (multi_scale_deformable_attention(single[0], spatial_shapes, *single[1:]) - exact).abs()
    gathering_error = multi_scale_deformable_attention_by_gathering(single[0], spatial_shapes, *single[1:]) - exact
    assert gathering_error.abs().max() < max(3 * grid_sample_error.max(), 1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_location_that_is_not_finite_makes_its_output_nan_as_in_the_grid_sample_form(bad):
    spatial_shapes = [(3, 5), (1, 4)]
    value, locations, weights = random_operands(spatial_shapes)
    locations[1, 4, 0, 1, 2, 0] = bad
    expected = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
    output = multi_scale_deformable_attention_by_gathering(value, spatial_shapes, locations, weights)
    assert torch.equal(output.isnan(), expected.isnan())
    assert output[1, 4, :4].isnan().all() and not output[1, 4, 4:].isnan().any()
    assert (output - expected).nan_to_num(0).abs().max() < 1e-12


def test_the_value_tokens_must_match_the_levels():
    value, locations, weights = random_operands([(3, 5)])
    with pytest.raises(ValueError, match=r"value has 15 tokens, but the levels \[\(3, 4\)\] have 12"):
        multi_scale_deformable_attention_by_gathering(value, [(3, 4)], locations, weights)


def module_pair(seed=3):
    """transformers' module with random weights and the gathering module with the same state dict (float64)."""
    torch.manual_seed(seed)
    reference = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(16, 2, 2, 3).double()
    for parameter in reference.parameters():
        nn.init.normal_(parameter, std=0.3)
    gathering = GatheringMultiscaleDeformableAttention(16, 2, 2, 3).double()
    gathering.load_state_dict(reference.state_dict())
    return reference, gathering


def encoder_inputs(spatial_shapes=((4, 5), (2, 3)), batch=2):
    tokens = sum(height * width for height, width in spatial_shapes)
    hidden_states = torch.randn(batch, tokens, 16, dtype=torch.float64)
    mask = torch.zeros(batch, tokens, dtype=torch.bool)
    mask[1, -3:] = True  # padded tokens: their values are zeroed
    return dict(
        hidden_states=hidden_states,
        attention_mask=mask,
        encoder_hidden_states=hidden_states,
        encoder_attention_mask=mask,
        position_embeddings=torch.randn(batch, tokens, 16, dtype=torch.float64),
        reference_points=torch.rand(batch, tokens, len(spatial_shapes), 2, dtype=torch.float64),
        spatial_shapes_list=list(spatial_shapes),
        level_start_index=torch.tensor([0, spatial_shapes[0][0] * spatial_shapes[0][1]]),
    )


def test_cpu_inference_gathers_and_equals_transformers_forward():
    reference, gathering = module_pair()
    inputs = encoder_inputs()
    with torch.no_grad():
        expected, expected_weights = reference(**inputs)
        refused = mock.Mock(side_effect=AssertionError("the grid_sample form ran"))
        with mock.patch.object(modeling_mask2former, "multi_scale_deformable_attention", refused):
            output, weights = gathering(**inputs)
    assert (output - expected).abs().max() < 1e-12
    assert (weights - expected_weights).abs().max() < 1e-15


def test_training_and_tracing_run_transformers_forward():
    reference, gathering = module_pair()
    inputs = encoder_inputs()
    expected = reference(**inputs)[0]
    gathered = mock.Mock(side_effect=AssertionError("the gathering form ran"))
    with mock.patch.object(modeling_deformable_attention, "multi_scale_deformable_attention_by_gathering", gathered):
        output = gathering(**inputs)[0]  # the weights need gradients: transformers' forward and its backward
        output.sum().backward()
        with torch.no_grad(), mock.patch.object(modeling_deformable_attention, "traced", return_value=True):
            traced_output = gathering(**inputs)[0]
    assert (output - expected).abs().max() < 1e-12 and (traced_output - expected).abs().max() < 1e-12
    assert gathering.sampling_offsets.weight.grad.abs().max() > 0


def test_the_gathering_runs_in_the_value_dtype():
    _, gathering = module_pair()
    inputs = encoder_inputs()
    with torch.no_grad():
        expected = gathering(**inputs)[0]
        gathering.to(torch.bfloat16)
        floating = ("hidden_states", "encoder_hidden_states", "position_embeddings", "reference_points")
        output = gathering(**{**inputs, **{key: inputs[key].bfloat16() for key in floating}})[0]
    assert output.dtype == torch.bfloat16
    assert (output.double() - expected).abs().max() < 0.05 * expected.abs().max()


def pixel_decoders():
    """The deformable pixel decoders of the tiny models, and MSFaPN's built on its own (as the decoder benchmarks
    build it)."""
    semask, msfapn = (
        SeMaskMask2FormerModel(
            SeMaskMask2FormerConfig(
                **tiny_mask2former_kwargs(pixel_decoder_type=decoder_type, backbone_config=tiny_semask_swin_kwargs())
            )
        )
        for decoder_type in ("msdeformattn", "msfapn")
    )
    vw_deformable = VWMask2FormerModel(tiny_vw_mask2former_config())
    channels = msfapn.pixel_level_module.encoder.channels
    return {
        "semask_msdeformattn": semask.pixel_level_module.decoder,
        "semask_msfapn": msfapn.pixel_level_module.decoder,
        "vw_deformable": vw_deformable.pixel_level_module.decoder,
        "msfapn_built_alone": SeMaskMSFaPNPixelDecoder(msfapn.config, feature_channels=channels),
    }


def test_the_deformable_pixel_decoders_gather_with_onednn_dense_layers_under_transformers_names():
    for name, decoder in pixel_decoders().items():
        attentions = [
            module
            for module in decoder.modules()
            if isinstance(module, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention)
        ]
        assert attentions and all(type(module) is GatheringMultiscaleDeformableAttention for module in attentions), name
        linears = [module for module in decoder.modules() if isinstance(module, nn.Linear)]
        assert linears and all(type(module) is OneDNNLinear for module in linears), name
        assert "encoder.layers.0.self_attn.sampling_offsets.weight" in decoder.state_dict(), name


def test_the_replacements_keep_the_state_dict_keys_and_settings():
    reference, _ = module_pair()
    container = nn.Sequential(nn.Sequential(reference), nn.Linear(3, 4, bias=False))
    keys = list(container.state_dict())
    use_cpu_deformable_encoder(container)
    attention = container[0][0]
    assert type(attention) is GatheringMultiscaleDeformableAttention
    assert (attention.d_model, attention.n_heads, attention.n_levels, attention.n_points) == (16, 2, 2, 3)
    assert type(container[1]) is OneDNNLinear and container[1].bias is None
    assert type(attention.value_proj) is OneDNNLinear and attention.value_proj.weight.dtype == torch.float64
    assert list(container.state_dict()) == keys
