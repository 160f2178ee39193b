"""One vocabulary: the same config attribute and output field names for the same meaning in every family, one
ignore-index constant, and configs saved under the older names still load."""

import dataclasses
import json

import pytest
import torch

import hf_semseg
from hf_semseg.models.configuration_utils_segmentation import IGNORE_INDEX
from hf_semseg.models.modeling_utils_segmentation import check_segmentation_labels, upsampled_cross_entropy


FAMILY_CONFIGS = {
    "semask_swin": hf_semseg.SeMaskSwinConfig,
    "pale": hf_semseg.PaleConfig,
    "vwformer": hf_semseg.VWFormerConfig,
    "semask_mask2former": hf_semseg.SeMaskMask2FormerConfig,
    "semask_maskformer": hf_semseg.SeMaskMaskFormerConfig,
}
SEGMENTER_OUTPUTS = [
    hf_semseg.SeMaskSemanticSegmenterOutput,
    hf_semseg.PaleSemanticSegmenterOutput,
    hf_semseg.VWFormerSemanticSegmenterOutput,
    hf_semseg.SeMaskMask2FormerSemanticSegmenterOutput,
    hf_semseg.SeMaskMaskFormerSemanticSegmenterOutput,
]


def test_ignore_index_is_255_and_every_family_uses_the_constant():
    assert IGNORE_INDEX == 255
    for name, config_class in FAMILY_CONFIGS.items():
        config = config_class()
        assert config.loss_ignore_index == IGNORE_INDEX, name
        config.loss_ignore_index = 254
        assert config.loss_ignore_index == 254, name
    # Mask2Former's own field answers to the shared name
    config = hf_semseg.SeMaskMask2FormerConfig()
    config.loss_ignore_index = 7
    assert config.ignore_value == 7


@pytest.mark.parametrize("name", ["semask_swin", "pale", "vwformer"])
def test_decode_head_width_and_classifier_dropout_have_one_name(name):
    config = FAMILY_CONFIGS[name]()
    assert isinstance(config.decoder_hidden_size, int) and config.decoder_hidden_size > 0
    if name != "pale":  # Pale's UperNet head has no classifier dropout
        assert config.classifier_dropout_prob == 0.1


def test_segmenter_outputs_name_the_stage_outputs_hidden_states():
    for output_class in SEGMENTER_OUTPUTS:
        fields = [field.name for field in dataclasses.fields(output_class)]
        assert fields[:2] == ["loss", "logits"], output_class.__name__
        assert "hidden_states" in fields and "encoder_hidden_states" not in fields, output_class.__name__


def test_a_vwformer_config_saved_under_the_older_names_loads(tmp_path):
    config = hf_semseg.VWFormerConfig(decoder_hidden_size=256, classifier_dropout_prob=0.2)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["decoder_hidden_size"] == 256 and saved["classifier_dropout_prob"] == 0.2
    assert "hidden_size" not in saved and "classifier_dropout" not in saved
    # what hf-semseg 0.1 wrote
    saved["hidden_size"], saved["classifier_dropout"] = (
        saved.pop("decoder_hidden_size"),
        saved.pop("classifier_dropout_prob"),
    )
    (tmp_path / "config.json").write_text(json.dumps(saved))
    reloaded = hf_semseg.VWFormerConfig.from_pretrained(tmp_path)
    assert reloaded.decoder_hidden_size == 256 and reloaded.classifier_dropout_prob == 0.2
    model = hf_semseg.VWFormerForSemanticSegmentation(reloaded)
    assert model.decode_head.classifier.in_channels == 256
    assert model.decode_head.dropout.p == 0.2


def test_label_check_names_the_bad_values_and_accepts_a_channel_axis():
    labels = torch.tensor([[[0, 1], [255, 2]]])
    assert check_segmentation_labels(labels[:, None], 3, IGNORE_INDEX).shape == (1, 2, 2)
    with pytest.raises(ValueError, match=r"values \[-1, 3\] outside \[0, 2\] and the ignore index 255"):
        check_segmentation_labels(torch.tensor([[[3, -1], [255, 2]]]), 3, IGNORE_INDEX)
    with pytest.raises(ValueError, match=r"shape \(batch, height, width\); got \(2, 2\)"):
        check_segmentation_labels(labels[0], 3, IGNORE_INDEX)


def test_upsampled_cross_entropy_averages_as_mmseg_or_over_labelled_pixels():
    # uniform logits: every pixel's loss is log(K); 1 of 4 pixels ignored
    logits = torch.zeros(1, 4, 1, 1)
    labels = torch.tensor([[[0, 1], [2, IGNORE_INDEX]]])
    log_k = torch.log(torch.tensor(4.0))
    torch.testing.assert_close(upsampled_cross_entropy(logits, labels, IGNORE_INDEX, True), 3 * log_k / 4)
    torch.testing.assert_close(upsampled_cross_entropy(logits, labels, IGNORE_INDEX, False), log_k)
    nothing_labelled = torch.full_like(labels, IGNORE_INDEX)
    assert upsampled_cross_entropy(logits, nothing_labelled, IGNORE_INDEX).item() == 0.0
