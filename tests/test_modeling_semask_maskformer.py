import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file
from script_helpers import key_list_state_dict

from hf_semseg import (
    SeMaskMask2FormerImageProcessor,
    SeMaskMaskFormerConfig,
    SeMaskMaskFormerForSemanticSegmentation,
    SeMaskSwinConfig,
)
from hf_semseg.conversion.common import CheckpointError, check_against_model
from hf_semseg.conversion.semask_d2 import convert_checkpoint
from hf_semseg.conversion.semask_maskformer import convert_maskformer_head, convert_state_dict, maskformer_head_fields
from hf_semseg.models.configuration_semask_maskformer import semask_maskformer_semantic_attention_types
from hf_semseg.models.modeling_semask_mask2former import upsample_semantic_logits
from hf_semseg.models.modeling_semask_maskformer import SeMaskMaskFormerLoss

from conftest import fixture_config_file, fixture_dir
from model_suite import (
    DETR_FIRST_LAYER_WITHOUT_GRADIENT,
    SegmentationModelSuite,
    open_semantic_gates,
    perturb_detr_first_layer,
    tiny_label_kwargs,
    tiny_semask_swin_kwargs,
)


FIXTURE = "semask_maskformer_tiny"
FOUR_STAGES = ["stage1", "stage2", "stage3", "stage4"]
WWWG = ["window", "window", "window", "global"]
TINY_DECODER = dict(d_model=32, decoder_attention_heads=4, decoder_ffn_dim=64, decoder_layers=3, num_queries=6)


def tiny_backbone(**overrides) -> SeMaskSwinConfig:
    return SeMaskSwinConfig(**tiny_semask_swin_kwargs(depths=[2, 1, 2, 1], semantic_attention_types=WWWG, **overrides))


def tiny_config(**overrides) -> SeMaskMaskFormerConfig:
    values = dict(
        backbone_config=tiny_backbone(),
        fpn_feature_size=32,
        mask_feature_size=32,
        decoder_config=dict(TINY_DECODER),
        **tiny_label_kwargs(),
    )
    values.update(overrides)
    return SeMaskMaskFormerConfig(**values)


class TestSeMaskMaskFormerForSemanticSegmentation(SegmentationModelSuite):
    model_class = SeMaskMaskFormerForSemanticSegmentation
    parameters_without_gradient = DETR_FIRST_LAYER_WITHOUT_GRADIENT
    # the value bias carries the first layer's output: the scale the rounding noise is measured against
    gradient_scale_parameter = "model.transformer_module.decoder.layers.0.self_attn.v_proj.bias"
    odd_sizes = ((37, 53), (65, 31), (20, 90))
    deterministic_overrides = {
        "decoder_config": tiny_config(
            decoder_config={**TINY_DECODER, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}
        ).decoder_config,
        "backbone_config": tiny_backbone(drop_path_rate=0.0, semantic_dropout_prob=0.0),
    }

    def get_config(self):
        return tiny_config()

    def get_image_processor(self):
        return SeMaskMask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})

    def prepare_for_gradient_check(self, model):
        open_semantic_gates(model)
        perturb_detr_first_layer(model)

    def expected_logits_size(self, height: int, width: int) -> tuple[int, int]:
        # the model pads its input to a multiple of 32 (as the original): logits are at 1/4 of the padded size
        return 8 * math.ceil(height / 32), 8 * math.ceil(width / 32)


# ---------------------------------------------------------------------------------------------------------------
# against the original (shared fixture)
# ---------------------------------------------------------------------------------------------------------------


def fixture_config(folder, state_dict) -> SeMaskMaskFormerConfig:
    """The config of the fixture's model from its config.json (detectron2 values) and the head's tensors."""
    original = json.loads((folder / "config.json").read_text())
    d2 = original["detectron2_config"]["MODEL"]
    swin, head, mask_former = d2["SWIN"], d2["SEM_SEG_HEAD"], d2["MASK_FORMER"]
    windowed = original["derived"]["semantic_attention_windowed_per_stage"]
    fields = maskformer_head_fields(state_dict)
    decoder = fields.pop("decoder_config")
    assert fields["num_labels"] == head["NUM_CLASSES"]
    assert (fields["fpn_feature_size"], fields["mask_feature_size"]) == (head["CONVS_DIM"], head["MASK_DIM"])
    assert decoder == {
        "d_model": mask_former["HIDDEN_DIM"],
        "num_queries": mask_former["NUM_OBJECT_QUERIES"],
        "decoder_layers": mask_former["DEC_LAYERS"],
        "decoder_ffn_dim": mask_former["DIM_FEEDFORWARD"],
    }
    assert fields["no_object_weight"] == pytest.approx(mask_former["NO_OBJECT_WEIGHT"])
    backbone = SeMaskSwinConfig(
        embed_dim=swin["EMBED_DIM"],
        depths=swin["DEPTHS"],
        num_heads=swin["NUM_HEADS"],
        window_size=swin["WINDOW_SIZE"],
        semantic_window_size=swin["SEM_WINDOW_SIZE"],
        semantic_attention_types=["window" if w else "global" for w in windowed],
        out_features=FOUR_STAGES,
        num_labels=head["NUM_CLASSES"],
    )
    return SeMaskMaskFormerConfig(
        backbone_config=backbone,
        decoder_config={**decoder, "decoder_attention_heads": mask_former["NHEADS"], "dropout": mask_former["DROPOUT"]},
        size_divisibility=mask_former["SIZE_DIVISIBILITY"],
        mask_weight=mask_former["MASK_WEIGHT"],
        dice_weight=mask_former["DICE_WEIGHT"],
        semantic_loss_weight=mask_former["CATE_WEIGHT"],
        use_auxiliary_loss=mask_former["DEEP_SUPERVISION"],
        **fields,
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The fixture's checkpoint through the SeMask detectron2 converter, with the run's config.yaml; its config must
    be the one the fixture's config.json describes."""
    folder = fixture_dir(FIXTURE)
    config_file = fixture_config_file(FIXTURE, tmp_path_factory.mktemp("config"))
    model, state_dict = convert_checkpoint(folder / "original_checkpoint.pth", config_file=config_file)
    expected_config = fixture_config(folder, state_dict)
    assert model.config.backbone_config.semantic_attention_types == WWWG
    for name in ("fpn_feature_size", "mask_feature_size", "num_labels", "size_divisibility", "no_object_weight"):
        assert getattr(model.config, name) == getattr(expected_config, name), name
    for name in ("d_model", "num_queries", "decoder_layers", "decoder_ffn_dim", "decoder_attention_heads", "dropout"):
        assert getattr(model.config.decoder_config, name) == getattr(expected_config.decoder_config, name), name
    for name in ("embed_dim", "depths", "num_heads", "window_size", "semantic_window_size"):
        assert getattr(model.config.backbone_config, name) == getattr(expected_config.backbone_config, name), name
    inputs = load_file(folder / "inputs.safetensors")
    expected = load_file(folder / "outputs.safetensors")
    with torch.no_grad():
        output = model(
            inputs["pixel_values"], output_hidden_states=True, output_auxiliary_logits=True, output_semantic_priors=True
        )
        model_output = model.model(inputs["pixel_values"])
    return folder, model, inputs, expected, output, model_output


def post_processed_scores(output, height: int, width: int) -> torch.Tensor:
    """The original's ``sem_seg``: the processor's exact path (mask logits upsampled to the padded input, semantic
    inference, crop, resize)."""
    processor = SeMaskMask2FormerImageProcessor()
    return processor.post_process_semantic_segmentation(
        output, target_sizes=[(height, width)], image_sizes=[(height, width)], return_segmentation_scores=True
    )[0]["segmentation_scores"]


def test_every_output_equals_the_original(converted):
    _, model, inputs, expected, output, model_output = converted
    height, width = inputs["pixel_values"].shape[-2:]
    actual = {
        "pred_logits": output.class_queries_logits,
        "pred_masks": output.masks_queries_logits,
        "mask_features": model_output.pixel_decoder_last_hidden_state,
        "decoder_hidden_states": torch.stack(model_output.transformer_decoder_intermediate_states),
        "semantic_head_pred": upsample_semantic_logits(output.semantic_logits),
        "sem_seg": post_processed_scores(output, height, width),
    }
    assert len(output.auxiliary_logits) == model.config.decoder_config.decoder_layers - 1 == 2
    for i, auxiliary in enumerate(output.auxiliary_logits):
        actual[f"aux_{i}_pred_logits"] = auxiliary["class_queries_logits"]
        actual[f"aux_{i}_pred_masks"] = auxiliary["masks_queries_logits"]
    for i in range(4):
        actual[f"backbone_res{i + 2}"] = output.hidden_states[i]
        actual[f"semantic_prior_res{i + 2}"] = output.semantic_priors[i]
    differences = {}
    for name, value in actual.items():
        assert value.shape == expected[name].shape, name
        differences[name] = (value - expected[name]).abs().max().item()
    print("max |hf - original|:", json.dumps(differences, indent=1))
    assert max(differences.values()) < 1e-4, differences


def test_released_key_list_converts_onto_the_default_config():
    """The 546 keys of the released SeMask-L MaskFormer (ADE20K) map one to one onto the default config's model, with
    the original's parameter count."""
    state_dict = key_list_state_dict(fixture_dir("semask_keys") / "maskformer_ade20k_large.json")
    fields = maskformer_head_fields(state_dict)
    assert fields == {
        "num_labels": 150,
        "fpn_feature_size": 256,
        "mask_feature_size": 256,
        "decoder_config": {"d_model": 256, "num_queries": 100, "decoder_layers": 6, "decoder_ffn_dim": 2048},
    }
    with torch.device("meta"):
        model = SeMaskMaskFormerForSemanticSegmentation(SeMaskMaskFormerConfig(num_labels=150))
    check_against_model(convert_state_dict(state_dict), model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == 218_719_231


def test_conversion_names_keys_without_a_rule():
    state_dict = {
        "sem_seg_head.predictor.transformer.encoder.layers.0.linear1.weight": torch.zeros(4, 2),
        "sem_seg_head.predictor.query_embed.weight": torch.zeros(3, 2),
        "backbone.anything": torch.zeros(1),  # the backbone converter's job
    }
    with pytest.raises(CheckpointError, match=r"1 keys have no conversion rule: .*transformer\.encoder\.layers\.0"):
        convert_maskformer_head(state_dict)
    assert issubclass(CheckpointError, ValueError)
    packed = {
        "sem_seg_head.predictor.query_embed.weight": torch.zeros(3, 2),
        "sem_seg_head.predictor.transformer.decoder.layers.1.multihead_attn.in_proj_weight": torch.arange(12.0).view(
            6, 2
        ),
    }
    converted = convert_maskformer_head(packed)
    prefix = "model.transformer_module.decoder.layers.1.encoder_attn."
    assert converted[prefix + "q_proj.weight"].tolist() == [[0, 1], [2, 3]]
    assert converted[prefix + "v_proj.weight"].tolist() == [[8, 9], [10, 11]]
    with pytest.raises(CheckpointError, match="missing key 'sem_seg_head.predictor.class_embed.weight'"):
        maskformer_head_fields(packed)


# ---------------------------------------------------------------------------------------------------------------
# loss and matching against hand computations
# ---------------------------------------------------------------------------------------------------------------


def test_full_loss_equals_hand_computation_for_constant_predictions():
    """Zeroed class/mask heads make every query of every decoder layer predict the class logits b and mask logit 0
    everywhere, so every loss term has a closed form. Input 40x50 (padded to 64x64): image 0 is all class 2, image 1
    class 1 on its left half and ignored (255) on the right; the padding and the ignored pixels are negatives of the
    target masks, as in the original."""
    config = tiny_config()
    torch.manual_seed(0)
    model = SeMaskMaskFormerForSemanticSegmentation(config).eval()
    bias = torch.tensor([0.3, -0.2, 0.5, 0.1, 0.7])
    with torch.no_grad():
        model.class_predictor.weight.zero_()
        model.class_predictor.bias.copy_(bias)
        last = model.mask_embedder.get_submodule("2.0")
        last.weight.zero_()
        last.bias.zero_()
    pixel_values = torch.randn(2, 3, 40, 50, generator=torch.Generator().manual_seed(1))
    labels = torch.full((2, 40, 50), 2)
    labels[1, :, :25] = 1
    labels[1, :, 25:] = 255
    with torch.no_grad():
        output = model(pixel_values, labels=labels)

    num_queries, no_object = config.decoder_config.num_queries, config.no_object_weight
    log_p = torch.log_softmax(bias.double(), dim=0)
    # one matched query (weight 1) and Q-1 no-object queries (weight 0.1) per image: weighted mean over all queries
    loss_ce = -(log_p[2] + log_p[1] + 2 * (num_queries - 1) * no_object * log_p[-1]) / (
        2 + 2 * (num_queries - 1) * no_object
    )
    pixels = 64 * 64
    focal, dice = 0.0, 0.0
    for positives in (40 * 50, 40 * 25):  # target pixels of the two masks (one per image)
        # p = 0.5 everywhere: BCE log 2, (1 - p_t)^2 = 1/4, alpha 0.25 on positives and 0.75 on negatives
        focal += (positives * 0.25 + (pixels - positives) * 0.75) * 0.25 * math.log(2.0) / pixels
        dice += 1 - (positives + 1) / (0.5 * pixels + positives + 1)
    loss_mask, loss_dice = focal / 2, dice / 2  # normalised by the 2 target masks
    upsampled = F.interpolate(output.semantic_logits, scale_factor=4, mode="bilinear", align_corners=True)
    loss_cate = F.cross_entropy(upsampled[:, :, :40, :50], labels, ignore_index=255)
    per_prediction = 1.0 * loss_ce + 20.0 * loss_mask + 1.0 * loss_dice
    num_predictions = config.decoder_config.decoder_layers  # one per decoder layer, all identical here
    expected = num_predictions * per_prediction + 0.4 * loss_cate
    torch.testing.assert_close(output.loss, expected.float(), atol=1e-5, rtol=1e-5)

    losses = model.compute_losses(
        (torch.zeros(2, num_queries, 5) + bias,) * 3,
        (torch.zeros(2, num_queries, 16, 16),) * 3,
        output.semantic_logits,
        labels,
        input_size=(40, 50),
    )
    assert sorted(losses) == sorted(
        ["loss_ce", "loss_mask", "loss_dice", "loss_cate"]
        + [f"loss_{n}_{i}" for n in ("ce", "mask", "dice") for i in (0, 1)]
    )
    torch.testing.assert_close(losses["loss_ce_0"], loss_ce.float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(losses["loss_mask_1"], torch.tensor(20.0 * loss_mask), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(losses["loss_dice"], torch.tensor(loss_dice), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(losses["loss_cate"], 0.4 * loss_cate, atol=1e-6, rtol=1e-6)
    # no auxiliary loss: only the final prediction's terms
    model.config.use_auxiliary_loss = False
    with torch.no_grad():
        no_aux = model(pixel_values, labels=labels).loss
    torch.testing.assert_close(no_aux, (per_prediction + 0.4 * loss_cate).float(), atol=1e-5, rtol=1e-5)


def test_matching_minimises_the_original_cost():
    """The matcher's assignment has the lowest total of the original cost (by brute force over every assignment):
    20 x focal + 1 x (-p(class)) + 1 x dice, on the mask logits' grid with the targets downsampled by nearest
    neighbours (every 4th pixel from the top-left)."""
    criterion = SeMaskMaskFormerLoss(tiny_config())
    generator = torch.Generator().manual_seed(0)
    class_logits = torch.randn(1, 5, 5, generator=generator)
    mask_logits = 2 * torch.randn(1, 5, 6, 7, generator=generator)
    classes = torch.tensor([0, 3, 2])
    masks = (torch.rand(3, 24, 28, generator=generator) > 0.5).float()
    ((query_index, target_index),) = criterion.match(class_logits, mask_logits, [classes], [masks])

    probabilities = class_logits[0].double().softmax(-1)
    logits = mask_logits[0].double().flatten(1)
    targets = masks[:, ::4, ::4].double().flatten(1)

    def cost(query: int, target: int) -> float:
        p, t = logits[query].sigmoid(), targets[target]
        p_t = p * t + (1 - p) * (1 - t)
        alpha_t = 0.25 * t + 0.75 * (1 - t)
        bce = F.binary_cross_entropy_with_logits(logits[query], t, reduction="none")
        focal = (alpha_t * (1 - p_t) ** 2 * bce).mean()
        dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
        return (20 * focal - probabilities[query, classes[target]] + dice).item()

    best = min(
        sum(cost(q, t) for t, q in enumerate(queries)) for queries in itertools.permutations(range(5), len(classes))
    )
    chosen = sum(cost(q, t) for q, t in zip(query_index.tolist(), target_index.tolist()))
    assert sorted(target_index.tolist()) == [0, 1, 2]
    assert chosen == pytest.approx(best, abs=1e-9)


def test_mask_losses_upsample_bilinearly_to_the_padded_input():
    criterion = SeMaskMaskFormerLoss(tiny_config())
    generator = torch.Generator().manual_seed(0)
    mask_logits = torch.randn(1, 4, 8, 8, generator=generator)
    targets = (torch.rand(2, 32, 32, generator=generator) > 0.5).float()
    indices = [(torch.tensor([3, 1]), torch.tensor([1, 0]))]
    focal, dice = criterion.loss_masks(mask_logits, [targets], indices, num_masks=2.0)
    upsampled = F.interpolate(mask_logits[0, [3, 1]][:, None], size=(32, 32), mode="bilinear", align_corners=False)
    logits, labels = upsampled[:, 0].flatten(1).double(), targets[[1, 0]].flatten(1).double()
    p = logits.sigmoid()
    p_t = p * labels + (1 - p) * (1 - labels)
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    expected_focal = ((0.25 * labels + 0.75 * (1 - labels)) * (1 - p_t) ** 2 * bce).mean(1).sum() / 2
    expected_dice = (1 - (2 * (p * labels).sum(1) + 1) / (p.sum(1) + labels.sum(1) + 1)).sum() / 2
    torch.testing.assert_close(focal.double(), expected_focal, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dice.double(), expected_dice, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# model behaviour
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (17, 31)])
def test_any_input_size_infers_and_trains(size):
    """The input is padded to 32 (a 1x1 image becomes 32x32, whose stride-32 map is one pixel: the FPN stem's
    GroupNorm then normalises single values), in eval and training mode."""
    torch.manual_seed(0)
    model = SeMaskMaskFormerForSemanticSegmentation(tiny_config()).eval()
    open_semantic_gates(model)
    pixel_values = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 4, (1, *size), generator=torch.Generator().manual_seed(2))
    padded = F.pad(pixel_values, (0, 32 - size[1], 0, 32 - size[0]))
    with torch.no_grad():
        output = model(pixel_values, labels=labels)
        torch.testing.assert_close(model(padded).logits, output.logits, atol=0, rtol=0)
    assert output.logits.shape == (1, 4, 8, 8) and torch.isfinite(output.loss)
    model.train()
    loss = model(pixel_values, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss) and model.class_predictor.weight.grad.abs().sum() > 0


def test_auxiliary_predictions_are_the_earlier_layers_through_the_final_layernorm():
    torch.manual_seed(0)
    model = SeMaskMaskFormerForSemanticSegmentation(tiny_config()).eval()
    pixel_values = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = model(pixel_values, output_auxiliary_logits=True, output_hidden_states=True)
        decoder = model.model.transformer_module.decoder
        states = output.transformer_decoder_hidden_states
    assert len(states) == 4 and not states[0].any()  # the zero query content, then one state per layer
    assert len(output.auxiliary_logits) == 2
    for i, auxiliary in enumerate(output.auxiliary_logits):
        expected = model.class_predictor(decoder.layernorm(states[i + 1]))
        torch.testing.assert_close(auxiliary["class_queries_logits"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        output.class_queries_logits, model.class_predictor(decoder.layernorm(states[-1])), atol=1e-6, rtol=0
    )
    with torch.no_grad():
        attentions = model(pixel_values, output_attentions=True)
    assert len(attentions.attentions) == len(attentions.cross_attentions) == 3
    assert attentions.cross_attentions[0].shape == (1, 4, 6, 4)  # heads, queries, the 2x2 stride-32 map


def test_bad_labels_are_named():
    model = SeMaskMaskFormerForSemanticSegmentation(tiny_config()).eval()
    pixel_values = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\[7\] outside \[0, 3\]"):
        model(pixel_values, labels=torch.full((1, 32, 32), 7))
    with pytest.raises(ValueError, match=r"labels of size \(20, 32\) for an input of \(32, 32\)"):
        model(pixel_values, labels=torch.zeros(1, 20, 32, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must have the input's size \(32, 32\) or its padded size \(32, 32\)"):
        model(pixel_values, labels=torch.zeros(1, 40, 32, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_labels", [19, 150, 171])
def test_semantic_attention_is_windowed_then_global_for_every_class_count(num_labels):
    config = SeMaskMaskFormerConfig(num_labels=num_labels)
    backbone = config.backbone_config
    assert backbone.semantic_attention_types == WWWG
    assert (backbone.embed_dim, backbone.depths, backbone.window_size) == (192, [2, 2, 18, 2], 12)
    assert backbone.num_labels == num_labels and backbone.out_features == FOUR_STAGES
    from_dict = SeMaskMaskFormerConfig(
        backbone_config={"embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}, num_labels=num_labels
    )
    assert from_dict.backbone_config.semantic_attention_types == WWWG
    assert semask_maskformer_semantic_attention_types(3) == ["window", "window", "global"]


def test_defaults_are_the_released_model():
    config = SeMaskMaskFormerConfig()
    decoder = config.decoder_config
    assert decoder.model_type == "detr" and not decoder.auxiliary_loss
    assert (decoder.d_model, decoder.decoder_attention_heads, decoder.decoder_ffn_dim) == (256, 8, 2048)
    assert (decoder.decoder_layers, decoder.num_queries, decoder.encoder_layers) == (6, 100, 0)
    assert decoder.dropout == decoder.attention_dropout == decoder.activation_dropout == 0.1
    assert (config.fpn_feature_size, config.mask_feature_size, config.size_divisibility) == (256, 256, 32)
    assert config.use_auxiliary_loss and config.loss_ignore_index == 255
    weights = (config.cross_entropy_weight, config.mask_weight, config.dice_weight, config.no_object_weight)
    assert weights == (1.0, 20.0, 1.0, 0.1) and config.semantic_loss_weight == 0.4
    # a partial decoder dict is completed with the released values, not DETR's defaults
    partial = SeMaskMaskFormerConfig(decoder_config={"d_model": 64})
    assert (partial.decoder_config.d_model, partial.decoder_config.encoder_layers) == (64, 0)
    assert partial.decoder_config.attention_dropout == 0.1


def test_decoder_auxiliary_loss_is_forced_off():
    """With auxiliary_loss=True transformers' DETR decoder feeds each layer's normalised output to the next layer,
    which the original does not: the config always turns it off, also for a decoder config assigned later."""
    config = tiny_config(decoder_config={**TINY_DECODER, "auxiliary_loss": True})
    assert config.decoder_config.auxiliary_loss is False
    replacement = tiny_config().decoder_config
    replacement.auxiliary_loss = True
    config.decoder_config = replacement
    assert config.decoder_config.auxiliary_loss is False
    config.decoder_config.auxiliary_loss = True  # changed on the sub-config itself: the model turns it off
    model = SeMaskMaskFormerForSemanticSegmentation(config)
    assert model.model.transformer_module.decoder.config.auxiliary_loss is False


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"fpn_feature_size": 40}, "fpn_feature_size = 40"),
        ({"mask_feature_size": 0}, "mask_feature_size = 0"),
        ({"decoder_config": {**TINY_DECODER, "decoder_attention_heads": 5}}, r"d_model \(32\).*heads \(5\)"),
        ({"decoder_config": {**TINY_DECODER, "decoder_layers": 0}}, "decoder_layers = 0"),
        ({"decoder_config": {**TINY_DECODER, "num_queries": 0}}, "num_queries = 0"),
        ({"size_divisibility": -1}, "size_divisibility = -1"),
        ({"backbone_config": {"model_type": "swin"}}, "must be a SeMask-Swin config"),
        (
            {"backbone_config": tiny_backbone(out_features=["stage3", "stage4"])},
            r"out_features = \['stage3', 'stage4'\]",
        ),
    ],
)
def test_invalid_config_values_are_named(overrides, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tiny_config(**overrides)
