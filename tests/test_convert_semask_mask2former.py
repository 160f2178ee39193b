import json
import re
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from script_helpers import key_list_state_dict, run_script
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import hf_semseg
from hf_semseg.conversion.common import CheckpointError, check_against_model
from hf_semseg.conversion.semask_mask2former import (
    apply_legacy_renames,
    convert_checkpoint,
    convert_state_dict,
    infer_backbone_config,
    infer_config,
    infer_config_and_variant,
    load_detectron2_checkpoint,
)
from hf_semseg.models.modeling_semask_mask2former import (
    SeMaskMask2FormerForSemanticSegmentation,
    semantic_scores,
    upsample_semantic_logits,
)
from hf_semseg.models.modeling_semask_swin import SeMaskSwinBackbone

from conftest import REPO_ROOT, fixture_config_file, fixture_dir


SCRIPT = REPO_ROOT / "conversion" / "convert_semask_mask2former_to_hf.py"
FIXTURES = ["semask_mask2former_tiny", "semask_mask2former_tiny_ade150", "semask_fapn_tiny", "semask_msfapn_tiny"]
# full released layouts -> (keys, parameters counted from the original code, semantic attention per stage, semantic
# window, pixel decoder, variant)
FULL_KEY_LISTS = {
    "mask2former_ade20k_large": (694, 222_630_000, "WWWG", 12, "msdeformattn", "semask-mask2former-large-ade20k"),
    "mask2former_cityscapes_large": (
        694,
        221_840_000,
        "WWWW",
        7,
        "msdeformattn",
        "semask-mask2former-large-cityscapes",
    ),
    "mask2former_fapn_ade20k_large": (621, 226_745_479, "WWGG", 12, "fapn", "semask-mask2former-fapn-large-ade20k"),
    "mask2former_msfapn_ade20k_large": (
        701,
        223_851_415,
        "WWGG",
        12,
        "msfapn",
        "semask-mask2former-msfapn-large-ade20k",
    ),
}
BACKBONE_KEY_LISTS = [
    "mask2former_ade20k_large_backbone",
    "mask2former_cityscapes_large_backbone",
    "mask2former_fapn_ade20k_large_backbone",
]


@pytest.fixture(scope="module", params=FIXTURES)
def converted(request, tmp_path_factory):
    folder = fixture_dir(request.param)
    config_file = fixture_config_file(request.param, tmp_path_factory.mktemp("config"))
    model, state_dict = convert_checkpoint(folder / "original_checkpoint.pth", config_file=config_file)
    inputs = load_file(folder / "inputs.safetensors")
    expected = load_file(folder / "outputs.safetensors")
    with torch.no_grad():
        output = model(
            inputs["pixel_values"], output_hidden_states=True, output_auxiliary_logits=True, output_semantic_priors=True
        )
    return folder, model, inputs, expected, output


def test_logits_equal_the_original_semantic_scores(converted):
    _, _, _, expected, output = converted
    original_scores = semantic_scores(expected["pred_logits"], expected["pred_masks"])
    assert (output.logits - original_scores).abs().max() < 1e-4
    assert (output.class_queries_logits - expected["pred_logits"]).abs().max() < 1e-4
    assert (output.masks_queries_logits - expected["pred_masks"]).abs().max() < 1e-4


def test_post_processed_probabilities_equal_the_original_sem_seg(converted):
    _, _, inputs, expected, output = converted
    height, width = inputs["pixel_values"].shape[-2:]  # the fixtures feed unresized (normalised) tensors
    processor = hf_semseg.SeMaskMask2FormerImageProcessor()
    result = processor.post_process_semantic_segmentation(
        output, target_sizes=[(height, width)], image_sizes=[(height, width)], return_segmentation_scores=True
    )[0]
    assert result["segmentation_scores"].shape == expected["sem_seg"].shape
    tolerance = 1e-4
    assert (result["segmentation_scores"] - expected["sem_seg"]).abs().max() < tolerance
    # the labels are the original's wherever its decision is not a near tie: its best two classes more than twice the
    # score tolerance apart (within it, a different summation order may swap them)
    top_two = expected["sem_seg"].topk(2, dim=0).values
    decided = top_two[0] - top_two[1] > 2 * tolerance
    assert decided.float().mean() > 0.9  # 97% with the tiny random fixtures
    assert torch.equal(result["segmentation"][decided], expected["sem_seg"].argmax(0)[decided])


def test_intermediate_outputs_equal_the_original(converted):
    _, model, inputs, expected, output = converted
    differences = {}
    for i in range(4):
        differences[f"res{i + 2}"] = output.hidden_states[i] - expected[f"backbone_res{i + 2}"]
        differences[f"prior{i + 2}"] = output.semantic_priors[i] - expected[f"semantic_prior_res{i + 2}"]
    for i in range(3):
        differences[f"multi_scale_{i}"] = output.pixel_decoder_hidden_states[i] - expected[f"multi_scale_feature_{i}"]
    if "mask_features" in expected:  # recorded in the FaPN / MSFaPN fixtures
        with torch.no_grad():
            mask_features = model.model(inputs["pixel_values"]).pixel_decoder_last_hidden_state
        differences["mask_features"] = mask_features - expected["mask_features"]
    for i, auxiliary in enumerate(output.auxiliary_logits):
        differences[f"aux{i}_logits"] = auxiliary["class_queries_logits"] - expected[f"aux_{i}_pred_logits"]
        differences[f"aux{i}_masks"] = auxiliary["masks_queries_logits"] - expected[f"aux_{i}_pred_masks"]
    differences["semantic_head"] = upsample_semantic_logits(output.semantic_logits) - expected["semantic_head_pred"]
    maxima = {name: diff.abs().max().item() for name, diff in differences.items()}
    assert max(maxima.values()) < 1e-4, maxima


def test_inferred_config_equals_the_original(converted):
    folder, model, *_ = converted
    original = json.loads((folder / "config.json").read_text())
    d2 = original["detectron2_config"]["MODEL"]
    config, backbone = model.config, model.config.backbone_config
    assert backbone.embed_dim == d2["SWIN"]["EMBED_DIM"] and backbone.depths == d2["SWIN"]["DEPTHS"]
    assert backbone.num_heads == d2["SWIN"]["NUM_HEADS"] and backbone.window_size == d2["SWIN"]["WINDOW_SIZE"]
    assert backbone.semantic_window_size == d2["SWIN"]["SEM_WINDOW_SIZE"]
    windowed = original["derived"]["semantic_attention_windowed_per_stage"]
    assert backbone.semantic_attention_types == ["window" if w else "global" for w in windowed]
    head, mask_former = d2["SEM_SEG_HEAD"], d2["MASK_FORMER"]
    assert config.num_labels == head["NUM_CLASSES"] == backbone.num_labels
    assert (config.feature_size, config.mask_feature_size) == (head["CONVS_DIM"], head["MASK_DIM"])
    expected_decoder = {"PixelFANDecoder": "fapn", "MSDeformAttnPixelFANDecoder": "msfapn"}
    assert config.pixel_decoder_type == expected_decoder.get(head["PIXEL_DECODER_NAME"], "msdeformattn")
    if config.pixel_decoder_type == "fapn":  # no deformable encoder: TRANSFORMER_ENC_LAYERS is unused
        assert config.encoder_layers == 0
    else:
        assert config.encoder_layers == head["TRANSFORMER_ENC_LAYERS"]
        assert config.encoder_feedforward_dim == original["derived"]["pixel_decoder_encoder_ffn_dim"]
    assert (config.hidden_dim, config.num_attention_heads) == (mask_former["HIDDEN_DIM"], mask_former["NHEADS"])
    assert (config.dim_feedforward, config.num_queries) == (
        mask_former["DIM_FEEDFORWARD"],
        mask_former["NUM_OBJECT_QUERIES"],
    )
    assert config.decoder_layers == mask_former["DEC_LAYERS"]
    assert config.no_object_weight == pytest.approx(mask_former["NO_OBJECT_WEIGHT"])
    assert sum(p.numel() for p in model.parameters()) == original["num_parameters"]


def state_dict_from_key_list(name: str) -> dict[str, torch.Tensor]:
    return key_list_state_dict(fixture_dir("semask_keys") / f"{name}.json")


@pytest.mark.parametrize("name", sorted(FULL_KEY_LISTS))
def test_every_released_layout_converts(name):
    num_keys, params, types, semantic_window, pixel_decoder, expected_variant = FULL_KEY_LISTS[name]
    state_dict = state_dict_from_key_list(name)
    assert len(state_dict) == num_keys
    config, variant = infer_config_and_variant(state_dict)
    # the semantic window (and FaPN's decoder heads) are not in the weights: they are the matched variant's
    assert variant == expected_variant
    assert config.pixel_decoder_type == pixel_decoder
    converted = convert_state_dict(state_dict)
    with torch.device("meta"):
        model = SeMaskMask2FormerForSemanticSegmentation(config)
    check_against_model(converted, model.state_dict())
    # the original's count: every parameter once (a tied GroupNorm copy is a second name of one)
    tied_copies = [key for key in state_dict if re.fullmatch(r".*\.align_\d+\.offset\.norm\.(weight|bias)", key)]
    original_params = sum(
        t.numel()
        for k, t in state_dict.items()
        if not k.endswith(("relative_position_index", "empty_weight")) and k not in tied_copies
    )
    assert sum(p.numel() for p in model.parameters()) == original_params
    if params % 10_000:  # the README's exact count
        assert original_params == params
    else:
        assert round(original_params / 1e6, 2) == params / 1e6
    backbone = config.backbone_config
    assert "".join(t[0].upper() for t in backbone.semantic_attention_types) == types
    assert backbone.semantic_window_size == semantic_window
    assert (config.decoder_layers, config.num_queries, config.num_attention_heads) == (10, 100, 8)
    assert config.dim_feedforward == 2048
    if pixel_decoder != "fapn":
        assert (config.encoder_layers, config.encoder_feedforward_dim) == (6, 1024)
    # the registered variant is this architecture
    registered = hf_semseg.variant_config(variant)
    for field in ("feature_size", "hidden_dim", "decoder_layers", "num_queries", "num_labels"):
        assert getattr(registered, field) == getattr(config, field), field
    for field in (
        "embed_dim",
        "depths",
        "num_heads",
        "window_size",
        "semantic_window_size",
        "semantic_attention_types",
    ):
        assert getattr(registered.backbone_config, field) == getattr(backbone, field), field


@pytest.mark.parametrize("name", BACKBONE_KEY_LISTS)
def test_every_released_backbone_layout_converts(name):
    state_dict = state_dict_from_key_list(name)
    assert len(state_dict) == 401
    num_labels = state_dict["backbone.layers.0.semantic_layer.class_injection.0.mlp_cls_q.weight"].shape[0]
    config = infer_backbone_config(state_dict, num_labels)
    converted = convert_state_dict(state_dict)
    with torch.device("meta"):
        backbone = SeMaskSwinBackbone(config)
    expected = {"model.pixel_level_module.encoder." + key: value for key, value in backbone.state_dict().items()}
    check_against_model(converted, expected)


def test_legacy_key_layouts_are_renamed(converted):
    folder = converted[0]
    state_dict = apply_legacy_renames(load_detectron2_checkpoint(folder / "original_checkpoint.pth"))
    legacy = {}
    for key, value in state_dict.items():
        key = key.replace("sem_seg_head.pixel_decoder.", "sem_seg_head.")  # version-1 head layout
        legacy[key.replace(".query_feat.", ".static_query.")] = value
    renamed = apply_legacy_renames(legacy)
    assert renamed.keys() == state_dict.keys()
    assert all(torch.equal(renamed[key], state_dict[key]) for key in state_dict)


# ---------------------------------------------------------------------------------------------------------------
# CLI and bad input
# ---------------------------------------------------------------------------------------------------------------


def test_cli_writes_a_folder_that_loads_with_the_auto_classes(tmp_path, capsys):
    folder = fixture_dir("semask_mask2former_tiny_ade150")
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import convert_semask_mask2former_to_hf as cli
    finally:
        sys.path.pop(0)
    # the run's config.yaml, as detectron2 writes it, with the test resize and dataset of an ADE20K run
    config = yaml.safe_load(fixture_config_file("semask_mask2former_tiny_ade150", tmp_path).read_text())
    config.update(INPUT={"MIN_SIZE_TEST": 640, "MAX_SIZE_TEST": 2560}, DATASETS={"TEST": ["ade20k_sem_seg_val"]})
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    output_dir = tmp_path / "out"
    arguments = ["--checkpoint_path", str(folder / "original_checkpoint.pth"), "--output_dir", str(output_dir)]
    assert cli.main(arguments + ["--config_file", str(config_file)]) == 0
    # a tiny model is no released variant: the dataset (names, label reduction) and test resize are the config's
    summary = capsys.readouterr().out
    assert f"no released variant has these weights; dataset ADE20K (--config_file {config_file});" in summary
    assert f"semantic_window_size=7, pre_norm=False, size_divisibility=32 from --config_file {config_file}" in summary
    model = AutoModelForSemanticSegmentation.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert type(processor).__name__ == "SeMaskMask2FormerImageProcessor" and processor.do_reduce_labels
    assert processor.size["shortest_edge"] == 640 and processor.size["longest_edge"] == 2560
    assert list(processor.image_mean) == [0.0, 0.0, 0.0]  # the fixture run's PIXEL_MEAN
    assert model.config.id2label[0] == "wall" and model.config.backbone_config.id2label[0] == "wall"
    inputs = load_file(folder / "inputs.safetensors")
    expected = load_file(folder / "outputs.safetensors")
    with torch.no_grad():
        logits = model(inputs["pixel_values"]).logits
    assert (logits - semantic_scores(expected["pred_logits"], expected["pred_masks"])).abs().max() < 1e-4
    card = (output_dir / "README.md").read_text()
    assert "| semantic attention per stage | window, window, window, global (semantic window 7) |" in card
    # a tiny model is not the released one: titled with its architecture (the class count there, once)
    assert "\n# SeMask-Swin (embed 16, depths 2-2-2-2) Mask2Former, 150 classes\n" in card
    assert card.count("150 classes") == 1 and "| dataset | ADE20K |" in card
    assert "no published result" in card


def run_cli(*args):
    return run_script(SCRIPT, *args, timeout=120)


def test_cli_fails_cleanly_on_a_corrupt_file(tmp_path):
    corrupt = tmp_path / "broken.pth"
    corrupt.write_bytes((fixture_dir("semask_mask2former_tiny") / "original_checkpoint.pth").read_bytes()[:5000])
    result = run_cli("--checkpoint_path", str(corrupt), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "broken.pth" in result.stderr and "corrupt" in result.stderr and "Traceback" not in result.stderr


def test_wrong_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_detectron2_checkpoint(tmp_path / "missing.pth")
    mmseg = tmp_path / "fpn.pth"
    torch.save({"meta": {}, "state_dict": {"backbone.x": torch.zeros(1)}}, mmseg)
    with pytest.raises(CheckpointError, match="mmseg checkpoint.*convert_semask_fpn_to_hf"):
        load_detectron2_checkpoint(mmseg)
    other = tmp_path / "other.pth"
    torch.save({"model": {"backbone.layers.0.blocks.0.norm1.weight": torch.zeros(1)}}, other)
    with pytest.raises(CheckpointError, match="plain Swin"):
        convert_checkpoint(other)


def test_unmapped_missing_and_misshaped_keys_are_named(converted, tmp_path):
    folder = converted[0]
    state_dict = apply_legacy_renames(load_detectron2_checkpoint(folder / "original_checkpoint.pth"))
    with pytest.raises(CheckpointError, match=r"sem_seg_head\.predictor\.extra_head\.weight"):
        convert_state_dict(dict(state_dict, **{"sem_seg_head.predictor.extra_head.weight": torch.zeros(1)}))
    missing = {k: v for k, v in state_dict.items() if k != "sem_seg_head.pixel_decoder.adapter_1.norm.bias"}
    config = infer_config(missing, variant=None, config_file=fixture_config_file(folder.name, tmp_path))
    model_state = SeMaskMask2FormerForSemanticSegmentation(config).state_dict()
    with pytest.raises(  # without the checkpoint's tensors only the converted name is known
        CheckpointError,
        match=r"missing from the checkpoint: \['model\.pixel_level_module\.decoder\.adapter_1\.1\.bias \(converted "
        r"name\)'\]",
    ):
        check_against_model(convert_state_dict(missing), model_state)
    with pytest.raises(  # the checkpoint key, from its converted sibling's (adapter_1.norm.weight)
        CheckpointError,
        match=r"missing from the checkpoint: \['sem_seg_head\.pixel_decoder\.adapter_1\.norm\.bias \(converted: "
        r"model\.pixel_level_module\.decoder\.adapter_1\.1\.bias\)'\]",
    ):
        check_against_model(convert_state_dict(missing), model_state, missing)
    misshaped = dict(state_dict)
    misshaped["sem_seg_head.predictor.decoder_norm.weight"] = torch.zeros(7)
    with pytest.raises(
        CheckpointError,
        match=r"sem_seg_head\.predictor\.decoder_norm\.weight \(converted: [\w.]+decoder\.layernorm\.weight\): "
        r"checkpoint \(7,\)",
    ):
        check_against_model(convert_state_dict(misshaped), model_state, misshaped)
    with pytest.raises(CheckpointError, match="missing key 'sem_seg_head.predictor.class_embed.weight'"):
        infer_config({k: v for k, v in state_dict.items() if "class_embed" not in k})


def test_a_maskformer_checkpoint_is_named_not_half_converted():
    """SeMask MaskFormer is another model class: this family's converter refuses it for what it is, before any value
    is asked for (the SeMask detectron2 converter routes it to its own)."""
    checkpoint = fixture_dir("semask_maskformer_tiny") / "original_checkpoint.pth"
    with pytest.raises(CheckpointError, match=re.escape("a SeMask MaskFormer checkpoint (DETR decoder)")):
        convert_checkpoint(checkpoint, config_file=None)


@pytest.mark.parametrize("fixture", ["semask_fapn_tiny", "semask_msfapn_tiny"])
def test_tied_group_norm_copies_must_be_equal(fixture):
    """FaPN's offset GroupNorm is the output conv's under a second name: loaded once, the copy checked equal."""
    state_dict = apply_legacy_renames(load_detectron2_checkpoint(fixture_dir(fixture) / "original_checkpoint.pth"))
    converted = convert_state_dict(state_dict)
    assert not any("offset.norm" in key or "offset_norm" in key for key in converted)
    edited = dict(state_dict)
    edited["sem_seg_head.pixel_decoder.align_1.offset.norm.bias"] = (
        state_dict["sem_seg_head.pixel_decoder.align_1.offset.norm.bias"] + 0.5
    )
    with pytest.raises(
        CheckpointError, match=r"align_1\.offset\.norm\.bias differs from .*layer_1\.norm\.bias by up to 0\.5"
    ):
        convert_state_dict(edited)
    orphan = {k: v for k, v in state_dict.items() if k != "sem_seg_head.pixel_decoder.layer_1.norm.weight"}
    with pytest.raises(CheckpointError, match=r"align_1\.offset\.norm\.weight is a copy of .*layer_1\.norm\.weight"):
        convert_state_dict(orphan)


def test_fapn_decoder_heads_come_from_the_config_or_the_variant(tmp_path):
    """FaPN has no deformable encoder whose sampling_offsets show the heads: without a config or a variant with
    these weights the converter stops and names MODEL.MASK_FORMER.NHEADS; the run's config gives them."""
    checkpoint = fixture_dir("semask_fapn_tiny") / "original_checkpoint.pth"
    with pytest.raises(CheckpointError, match=r"MODEL\.MASK_FORMER\.NHEADS"):
        convert_checkpoint(checkpoint, config_file=None)
    model, _ = convert_checkpoint(checkpoint, config_file=fixture_config_file("semask_fapn_tiny", tmp_path))
    assert model.config.num_attention_heads == 4
