"""transformers' own common tests (``ModelTesterMixin``, ``BackboneTesterMixin``, ``ConfigTester``,
``ImageProcessingTestMixin``) run against every hf-semseg model class and image processor.

The common modules come from the sdist of the installed transformers (see ``transformers_tests.py``); without them
(no network and an empty cache) this module is skipped with the reason.

One test class per model class, written the way transformers tests its nearest relatives: Swin (``SwinModelTest`` /
``SwinBackboneTest``) for the encoders, backbones and the Pale classifier, UperNet (``UperNetModelTest``) for the
semantic-segmentation heads over a backbone, Mask2Former (``Mask2FormerModelTest``) for SeMask-Mask2Former. The
overrides below are those of these upstream classes, adapted where our outputs differ in form (our hidden states are
``(B, C, H, W)`` maps, not Swin's ``(B, L, C)`` sequences). Tiny configs, 32-64 px inputs.

transformers' common tests recognise a model's task by its class name in the static ``MODEL_*_MAPPING_NAMES`` tables
(``_prepare_for_class`` adds ``labels`` to a semantic-segmentation class, ``test_training`` skips base models and
backbones, ...). Our classes are registered with the Auto classes at run time and are not in those tables, so the
tables the common module reads are extended with our classes (the common module's globals only; transformers' own
tables are untouched).
"""

import collections.abc
import inspect
import unittest

import numpy as np
import pytest
import torch
from torch import nn
from transformers import SwinConfig
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers_tests import TransformersTestsUnavailable, load_common_tests

from hf_semseg import (
    KeepRatioImageProcessor,
    KeepRatioImageProcessorPil,
    PaleBackbone,
    PaleConfig,
    PaleForImageClassification,
    PaleForSemanticSegmentation,
    PaleModel,
    SeMaskMask2FormerConfig,
    SeMaskMask2FormerForSemanticSegmentation,
    SeMaskMask2FormerImageProcessor,
    SeMaskMask2FormerImageProcessorPil,
    SeMaskMask2FormerModel,
    SeMaskMaskFormerConfig,
    SeMaskMaskFormerForSemanticSegmentation,
    SeMaskSwinBackbone,
    SeMaskSwinConfig,
    SeMaskSwinForSemanticSegmentation,
    SeMaskSwinModel,
    VWFormerConfig,
    VWFormerForSemanticSegmentation,
    VWMask2FormerConfig,
    VWMask2FormerForSemanticSegmentation,
)
from hf_semseg.models.modeling_semask_mask2former import SeMaskMask2FormerSemanticSegmenterOutput

from model_suite import (
    FOUR_STAGES,
    ONEDNN_BFLOAT16,
    tiny_label_kwargs,
    tiny_mask2former_kwargs,
    tiny_pale_kwargs,
    tiny_semask_swin_kwargs,
    tiny_vw_mask2former_config,
)


#: tests that fail for a known open reason, as ``{"Class.test_name": "reason"}``: strict xfails (``conftest.py``), so
#: each still runs and one that starts passing fails the suite until it is taken off this list. None today.
KNOWN_FAILURES: dict[str, str] = {}

try:
    common = load_common_tests()
except TransformersTestsUnavailable as error:
    pytest.skip(f"transformers' common test modules are unavailable: {error}", allow_module_level=True)

ModelTesterMixin = common.modeling.ModelTesterMixin
floats_tensor = common.modeling.floats_tensor
ids_tensor = common.modeling.ids_tensor
BackboneTesterMixin = common.backbone.BackboneTesterMixin
ConfigTester = common.configuration.ConfigTester
ImageProcessingTestMixin = common.image_processing.ImageProcessingTestMixin
ImageProcessingTester = common.image_processing.ImageProcessingTester
PostProcessSemanticSegmentationTestMixin = common.image_processing.PostProcessSemanticSegmentationTestMixin

#: our classes in the task tables of the common module (model_type -> class name, as transformers' own entries)
_TASK_TABLES = {
    "MODEL_MAPPING_NAMES": {
        "semask_swin": "SeMaskSwinModel",
        "pale": "PaleModel",
        "semask_mask2former": "SeMaskMask2FormerModel",
    },
    "MODEL_FOR_BACKBONE_MAPPING_NAMES": {"semask_swin": "SeMaskSwinBackbone", "pale": "PaleBackbone"},
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES": {"pale": "PaleForImageClassification"},
    "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES": {
        "semask_swin": "SeMaskSwinForSemanticSegmentation",
        "pale": "PaleForSemanticSegmentation",
        "vwformer": "VWFormerForSemanticSegmentation",
        "semask_mask2former": "SeMaskMask2FormerForSemanticSegmentation",
        "vw_mask2former": "VWMask2FormerForSemanticSegmentation",
    },
}
for _table, _entries in _TASK_TABLES.items():
    setattr(common.modeling, _table, {**getattr(common.modeling, _table), **_entries})

STAGES = FOUR_STAGES


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread while this module runs: on these tiny models thread hand-offs cost more than they save,
    and on a busy machine two threads contending make the module about 3x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------
# tiny configs (those of tests/test_modeling_*.py, with fewer blocks)
# ---------------------------------------------------------------------------------------------------------------


def semask_swin_config(**overrides) -> SeMaskSwinConfig:
    """tests/test_modeling_semask_swin.py's tiny_config with one block in stages 2-4 (two in stage 1: a shifted
    window block too); the four stages, which the Semantic-FPN model takes."""
    values = dict(
        depths=[2, 1, 1, 1],
        semantic_attention_types=["window", "window", "global", "global"],
        decoder_hidden_size=16,
        out_features=STAGES,
    )
    values.update(overrides)
    return SeMaskSwinConfig(**tiny_semask_swin_kwargs(**values))


def pale_config(**overrides) -> PaleConfig:
    """tests/test_modeling_pale.py's tiny_pale_config (the four stages, which the UperNet model takes)."""
    values = tiny_pale_kwargs(
        decoder_hidden_size=16, auxiliary_channels=8, pool_scales=[1, 2], out_features=STAGES, **tiny_label_kwargs()
    )
    values.update(overrides)
    return PaleConfig(**values)


def vwformer_config(backbone_config, **overrides) -> VWFormerConfig:
    """tests/test_modeling_vwformer.py's tiny_vwformer_config."""
    values = dict(backbone_config=backbone_config, decoder_hidden_size=64, num_attention_heads=2, **tiny_label_kwargs())
    values.update(overrides)
    return VWFormerConfig(**values)


def vwformer_swin_config() -> VWFormerConfig:
    swin = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 2, 4],
        window_size=4,
        drop_path_rate=0.0,
        out_features=STAGES,
    )
    return vwformer_config(swin)


def vwformer_pale_config() -> VWFormerConfig:
    # out_features left unset: VWFormerConfig gives the backbone its four stages
    return vwformer_config(PaleConfig(**tiny_pale_kwargs(depths=[1, 1, 1, 1], drop_path_rate=0.0)))


def vwformer_semask_swin_config() -> VWFormerConfig:
    backbone = tiny_semask_swin_kwargs(
        depths=[1, 1, 1, 1], semantic_window_size=4, drop_path_rate=0.0, semantic_dropout_prob=0.0
    )
    return vwformer_config(SeMaskSwinConfig(**backbone, out_features=STAGES))


def semask_mask2former_config(**overrides) -> SeMaskMask2FormerConfig:
    """tests/test_modeling_semask_mask2former.py's tiny_config with a one-block backbone stage 3 and 2 decoder layers."""
    # out_features left unset: SeMaskMask2FormerConfig gives the backbone its four stages
    backbone = SeMaskSwinConfig(
        **tiny_semask_swin_kwargs(
            depths=[2, 1, 1, 1], semantic_attention_types=["window", "window", "window", "global"]
        )
    )
    values = tiny_mask2former_kwargs(backbone_config=backbone, decoder_layers=2)
    values.update(overrides)
    return SeMaskMask2FormerConfig(**values)


class TinyImageModelTester:
    """The model tester of every class: random pixel values (and label maps) of ``image_size`` for the config of
    ``get_config``. Attributes the common tests read (``batch_size``, ``is_training``...) plus ``expected_*`` values
    for our overrides."""

    def __init__(self, parent, get_config, batch_size=2, image_size=32, num_channels=3, is_training=True, **attributes):
        self.parent = parent
        self._get_config = get_config
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_channels = num_channels
        self.is_training = is_training
        for key, value in attributes.items():
            setattr(self, key, value)

    def get_config(self):
        return self._get_config()

    def prepare_config_and_inputs(self):
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size, self.image_size, self.image_size], config.num_labels)
        return config, pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


# ---------------------------------------------------------------------------------------------------------------
# what every model test class shares
# ---------------------------------------------------------------------------------------------------------------


class HfSemsegModelTestMixin(ModelTesterMixin):
    """ModelTesterMixin + ConfigTester for one model class. Subclasses set ``all_model_classes`` (one class),
    ``get_config``, ``config_class`` and the ConfigTester arguments."""

    config_class = None
    #: a non-default value for the ConfigTester (it checks that the value survives to_json / save_pretrained)
    config_tester_kwargs = {}
    config_common_properties = ["num_channels"]
    tester_kwargs = {}

    @staticmethod
    def get_config():
        raise NotImplementedError

    def setUp(self):
        self.model_tester = TinyImageModelTester(self, self.get_config, **self.tester_kwargs)
        self.config_tester = ConfigTester(
            self,
            config_class=self.config_class,
            has_text_modality=False,
            common_properties=list(self.config_common_properties),
            **self.config_tester_kwargs,
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_forward_signature(self):
        # as BackboneTesterMixin / Mask2FormerModelTest: pixel_values is the first argument
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            arg_names = [*inspect.signature(model.forward).parameters.keys()]
            self.assertListEqual(arg_names[:1], ["pixel_values"])

    @unittest.skip(reason="the model does not use feedforward chunking (as SwinModelTest)")
    def test_feed_forward_chunking(self):
        pass

    # test_eager_matches_sdpa_inference runs 25 variants: 3 dtypes x SDPA kernels on/off x padding side left/right x
    # with/without an attention mask, + output_attentions. Our models take no attention_mask, so the padding side and
    # the mask only change which positions of the same two outputs are compared: the 6 "pad_left_no_attn_mask" runs
    # (every dtype, kernels on and off) and the output_attentions one cover every distinct computation.
    for _name in dir(ModelTesterMixin):
        if _name.startswith("test_eager_matches_sdpa_inference_") and (
            "_pad_right" in _name or not ("_no_attn_mask" in _name or "_output_attentions" in _name)
        ):
            locals()[_name] = unittest.skip(
                reason="the model takes no attention_mask: this padding / attention-mask variant repeats the "
                "computation of a 'pad_left_no_attn_mask' variant of test_eager_matches_sdpa_inference"
            )(lambda self: None)
    del _name

    def check_attention_outputs(self):
        """SwinModelTest.test_attention_outputs: attentions on request (argument, then config) with eager attention,
        their number, the shape of the first, and that they come after the hidden states in the output tuple."""
        tester = self.model_tester
        config, inputs_dict = tester.prepare_config_and_inputs_for_common()
        config.return_dict = True
        for model_class in self.all_model_classes:
            inputs_dict["output_attentions"] = True
            inputs_dict["output_hidden_states"] = False
            config.return_dict = True
            model = model_class._from_config(config, attn_implementation="eager")
            config = model.config
            model.eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            attentions = outputs.attentions
            self.assertEqual(len(attentions), tester.expected_num_attentions)

            # output_attentions through the config
            del inputs_dict["output_attentions"]
            config.output_attentions = True
            model = model_class(config)
            model.eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            attentions = outputs.attentions
            self.assertEqual(len(attentions), tester.expected_num_attentions)
            for index, attention in enumerate(attentions):
                self.assertIsInstance(attention, torch.Tensor, f"attentions[{index}] is a {type(attention).__name__}")
            self.assertListEqual(list(attentions[0].shape[-3:]), tester.expected_first_attention_shape)
            out_len = len(outputs)

            # attentions are last, after the hidden states
            inputs_dict["output_attentions"] = True
            inputs_dict["output_hidden_states"] = True
            model = model_class(config)
            model.eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            self.assertEqual(out_len + 1, len(outputs))
            self.assertEqual(len(outputs.attentions), tester.expected_num_attentions)
            self.assertListEqual(list(outputs.attentions[0].shape[-3:]), tester.expected_first_attention_shape)


class SwinLikeTestMixin(HfSemsegModelTestMixin):
    """The encoders, backbones and the classifier, as SwinModelTest tests SwinModel / SwinBackbone /
    SwinForImageClassification."""

    test_resize_embeddings = False

    def test_model_get_set_embeddings(self):
        # SwinModelTest's override: the patch embedding is the input embedding
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            x = model.get_output_embeddings()
            self.assertTrue(x is None or isinstance(x, nn.Linear))

    def test_attention_outputs(self):
        self.check_attention_outputs()

    def check_hidden_states_output(self, inputs_dict, config, model_class, image_size):
        """SwinModelTest.check_hidden_states_output for (B, C, H, W) maps: the embedding output and the output of
        every stage (len(depths) + 1), the first with embed_dim channels at 1/patch of the input."""
        model = model_class(config)
        model.eval()
        with torch.no_grad():
            outputs = model(**self._prepare_for_class(inputs_dict, model_class))
        hidden_states = outputs.hidden_states
        expected_num_layers = getattr(self.model_tester, "expected_num_hidden_layers", len(config.depths) + 1)
        self.assertEqual(len(hidden_states), expected_num_layers)
        patch = self.model_tester.patch_size
        patch = patch if isinstance(patch, collections.abc.Iterable) else (patch, patch)
        expected = [self.model_tester.embed_dim, -(-image_size[0] // patch[0]), -(-image_size[1] // patch[1])]
        self.assertListEqual(list(hidden_states[0].shape[-3:]), expected)

    def check_backbone_retain_grad(self):
        """ModelTesterMixin.test_retain_grad_hidden_states_attentions for a backbone class. Upstream runs that test on
        ``all_model_classes[0]`` only, SwinModel in SwinModelTest, never on SwinBackbone, whose first output is the
        tuple of feature maps (no tensor to backpropagate from); here the first feature map takes the place of
        ``outputs[0]``, and the first hidden state (the embedding output) and attention map must get a gradient."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        config.output_hidden_states = True
        config.output_attentions = True
        model_class = self.all_model_classes[0]
        model = model_class._from_config(config, attn_implementation="eager")
        outputs = model(**self._prepare_for_class(inputs_dict, model_class))
        hidden_states = outputs.hidden_states[0]
        hidden_states.retain_grad()
        attentions = outputs.attentions[0]
        attentions.retain_grad()
        outputs.feature_maps[0].flatten()[0].backward(retain_graph=True)
        self.assertIsNotNone(hidden_states.grad)
        self.assertIsNotNone(attentions.grad)

    def test_hidden_states_output(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        image_size = (self.model_tester.image_size,) * 2
        for model_class in self.all_model_classes:
            inputs_dict["output_hidden_states"] = True
            self.check_hidden_states_output(inputs_dict, config, model_class, image_size)
            # output_hidden_states through the config
            del inputs_dict["output_hidden_states"]
            config.output_hidden_states = True
            self.check_hidden_states_output(inputs_dict, config, model_class, image_size)


class UperNetLikeTestMixin(HfSemsegModelTestMixin):
    """Semantic segmentation heads over a backbone, as UperNetModelTest tests UperNetForSemanticSegmentation."""

    test_resize_embeddings = False
    #: logits stride and padding multiple (our heads predict at 1/4 of the input size)
    logits_stride = 4

    @unittest.skip(reason="the segmentation model has no input and output embeddings (as UperNetModelTest)")
    def test_model_get_set_embeddings(self):
        pass

    def test_for_semantic_segmentation(self):
        # UperNetModelTester.create_and_check_for_semantic_segmentation (our logits are at 1/4 of the input), + loss
        config, pixel_values, labels = self.model_tester.prepare_config_and_inputs()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            with torch.no_grad():
                result = model(pixel_values)
                with_loss = model(pixel_values, labels=labels)
            size = -(-self.model_tester.image_size // self.logits_stride)
            self.assertEqual(result.logits.shape, (self.model_tester.batch_size, config.num_labels, size, size))
            self.assertEqual(with_loss.loss.shape, ())
            self.assertTrue(torch.isfinite(with_loss.loss))

    def test_hidden_states_output(self):
        # UperNetModelTest's override: the backbone's stage count + 1 hidden states, the first at 1/4 of the input
        def check_hidden_states_output(inputs_dict, config, model_class):
            model = model_class(config)
            model.eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            hidden_states = outputs.hidden_states
            self.assertEqual(len(hidden_states), self.model_tester.num_stages + 1)
            size = self.model_tester.image_size // 4
            self.assertListEqual(list(hidden_states[0].shape[-2:]), [size, size])

        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            inputs_dict["output_hidden_states"] = True
            check_hidden_states_output(inputs_dict, config, model_class)
            # output_hidden_states through the config
            del inputs_dict["output_hidden_states"]
            config.output_hidden_states = True
            check_hidden_states_output(inputs_dict, config, model_class)

    def test_attention_outputs(self):
        if not self.has_attentions:
            self.skipTest(reason="the model does not output attentions (as UperNetModelTest: has_attentions=False)")
        self.check_attention_outputs()


class Mask2FormerLikeTestMixin(HfSemsegModelTestMixin):
    """SeMask-Mask2Former, as Mask2FormerModelTest tests Mask2FormerModel / Mask2FormerForUniversalSegmentation."""

    config_class = SeMaskMask2FormerConfig
    #: the segmentation model of the family (the retain-grad and head tests train it with labels)
    head_model_class = SeMaskMask2FormerForSemanticSegmentation
    config_common_properties = []
    # 64 px: at 32 px the stride-32 level is 1 x 1, where the pixel decoder's GroupNorm(32, 32) has one value per
    # group (it refuses a batch of one, and normalises every value to 0 otherwise); upstream uses 256 px
    tester_kwargs = dict(image_size=64)
    is_encoder_decoder = False
    test_missing_keys = False
    test_resize_embeddings = False

    @staticmethod
    def get_config():
        return semask_mask2former_config()

    @unittest.skip(reason="Mask2Former does not have a get_input_embeddings method (as Mask2FormerModelTest)")
    def test_model_get_set_embeddings(self):
        pass

    def test_hidden_states_output(self):
        # Mask2FormerModelTester.check_output_hidden_state (with assertEqual where upstream has a vacuous assertTrue):
        # the backbone's stage maps, the pixel decoder's multi-scale maps (strides 32, 16, 8), one decoder state per
        # decoder layer (the queries entering each masked-attention layer and the final ones)
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            with torch.no_grad():
                outputs = model(**inputs_dict, output_hidden_states=True)
            self.assertEqual(len(outputs.hidden_states), len(config.backbone_config.depths))
            self.assertEqual(len(outputs.pixel_decoder_hidden_states), 3)
            self.assertEqual(len(outputs.transformer_decoder_hidden_states), config.decoder_layers)

    def test_retain_grad_hidden_states_attentions(self):
        # Mask2FormerModelTest's override: the head model in training mode, with labels; the loss reaches the first
        # backbone map, pixel decoder map and decoder query state, and the first attention map
        config, pixel_values, labels = self.model_tester.prepare_config_and_inputs()
        config.output_hidden_states = True
        config.output_attentions = True
        model = self.head_model_class(config)
        model.train()
        outputs = model(pixel_values, labels=labels)
        retained = {
            "hidden_states": outputs.hidden_states[0],
            "pixel_decoder_hidden_states": outputs.pixel_decoder_hidden_states[0],
            "transformer_decoder_hidden_states": outputs.transformer_decoder_hidden_states[0],
            "attentions": outputs.attentions[0],
        }
        for tensor in retained.values():
            tensor.retain_grad()
        outputs.loss.backward(retain_graph=True)
        for name, tensor in retained.items():
            self.assertIsNotNone(tensor.grad, f"{name}[0] has no gradient")

    def test_attention_outputs(self):
        # Mask2FormerModelTest's override
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            outputs = model(**inputs, output_attentions=True)
            self.assertTrue(outputs.attentions is not None)


# ---------------------------------------------------------------------------------------------------------------
# SeMask-Swin
# ---------------------------------------------------------------------------------------------------------------

SEMASK_SWIN_DEPTHS = [2, 1, 1, 1]
SEMASK_SWIN_TESTER = dict(
    image_size=32,
    embed_dim=16,
    patch_size=4,
    num_stages=4,
    # one window attention per Swin block, one semantic attention per stage
    expected_num_attentions=sum(SEMASK_SWIN_DEPTHS) + 4,
    expected_first_attention_shape=[1, 16, 16],  # num_heads[0], window_size**2, window_size**2
)


class SeMaskSwinTestMixin(SwinLikeTestMixin):
    config_class = SeMaskSwinConfig
    # SwinModelTest uses embed_dim=37, which our config refuses (not divisible by num_heads[0] = 3)
    config_tester_kwargs = {"embed_dim": 48}
    config_common_properties = ["image_size", "patch_size", "num_channels"]
    tester_kwargs = SEMASK_SWIN_TESTER

    @staticmethod
    def get_config():
        return semask_swin_config()

    def test_hidden_states_output_with_padding(self):
        # SwinModelTest's: a patch size that does not divide the input
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        config.patch_size = 3
        self.model_tester.patch_size = 3
        image_size = (self.model_tester.image_size,) * 2
        for model_class in self.all_model_classes:
            inputs_dict["output_hidden_states"] = True
            self.check_hidden_states_output(inputs_dict, config, model_class, image_size)
            del inputs_dict["output_hidden_states"]
            config.output_hidden_states = True
            self.check_hidden_states_output(inputs_dict, config, model_class, image_size)


class SeMaskSwinModelTest(SeMaskSwinTestMixin, unittest.TestCase):
    all_model_classes = (SeMaskSwinModel,)

    def test_model(self):
        # SwinModelTester.create_and_check_model for maps: last_hidden_state (B, 8 C, H/32, W/32)
        config, pixel_values, _ = self.model_tester.prepare_config_and_inputs()
        model = SeMaskSwinModel(config).eval()
        with torch.no_grad():
            result = model(pixel_values)
        size = self.model_tester.image_size // 32
        self.assertEqual(
            result.last_hidden_state.shape, (self.model_tester.batch_size, 8 * config.embed_dim, size, size)
        )


class SeMaskSwinBackboneModelTest(SeMaskSwinTestMixin, unittest.TestCase):
    all_model_classes = (SeMaskSwinBackbone,)

    def test_retain_grad_hidden_states_attentions(self):
        self.check_backbone_retain_grad()

    def test_backbone(self):
        # SwinModelTester.create_and_check_backbone
        config, pixel_values, _ = self.model_tester.prepare_config_and_inputs()
        config.out_features = ["stage1", "stage2"]
        model = SeMaskSwinBackbone(config).eval()
        with torch.no_grad():
            result = model(pixel_values)
        self.assertEqual(len(result.feature_maps), len(config.out_features))
        self.assertListEqual(list(result.feature_maps[0].shape), [2, model.channels[0], 8, 8])
        self.assertEqual(len(model.channels), len(config.out_features))
        # out_features=None: the last stage only
        config.out_features = None
        model = SeMaskSwinBackbone(config).eval()
        with torch.no_grad():
            result = model(pixel_values)
        self.assertEqual(len(result.feature_maps), 1)
        self.assertListEqual(list(result.feature_maps[0].shape), [2, model.channels[-1], 1, 1])
        self.assertEqual(len(model.channels), 1)


class SeMaskSwinBackboneTest(BackboneTesterMixin, unittest.TestCase):
    all_model_classes = (SeMaskSwinBackbone,)
    config_class = SeMaskSwinConfig

    def setUp(self):
        self.model_tester = TinyImageModelTester(self, semask_swin_config, **SEMASK_SWIN_TESTER)


class SeMaskSwinForSemanticSegmentationTest(SeMaskSwinTestMixin, UperNetLikeTestMixin, unittest.TestCase):
    all_model_classes = (SeMaskSwinForSemanticSegmentation,)

    # the head's own tests, not Swin's
    test_model_get_set_embeddings = UperNetLikeTestMixin.test_model_get_set_embeddings
    test_hidden_states_output = UperNetLikeTestMixin.test_hidden_states_output
    test_attention_outputs = SwinLikeTestMixin.test_attention_outputs

    @unittest.skip(reason="the patch-size variation of SwinModelTest checks the encoder's embedding output")
    def test_hidden_states_output_with_padding(self):
        pass


# ---------------------------------------------------------------------------------------------------------------
# Pale
# ---------------------------------------------------------------------------------------------------------------

PALE_DEPTHS = [1, 1, 2, 1]
PALE_TESTER = dict(
    image_size=32,
    embed_dim=16,
    patch_size=4,  # the stride of the stem
    num_stages=4,
    # one attention tensor per branch (rows, columns) per block: transformers' outputs are flat tuples of tensors
    expected_num_attentions=2 * sum(PALE_DEPTHS),
    # (batch x groups, heads per branch, tokens, tokens) of stage 1's row branch: heads 2 -> 1 per branch; 32 px ->
    # an 8 x 8 map, pale size 3 -> 3 interlaced rows of 8 tokens per group
    expected_first_attention_shape=[1, 24, 24],
)


class PaleTestMixin(SwinLikeTestMixin):
    config_class = PaleConfig
    config_tester_kwargs = {"embed_dim": 48}
    tester_kwargs = PALE_TESTER

    @staticmethod
    def get_config():
        return pale_config()


class PaleModelTest(PaleTestMixin, unittest.TestCase):
    all_model_classes = (PaleModel,)


class PaleBackboneModelTest(PaleTestMixin, unittest.TestCase):
    all_model_classes = (PaleBackbone,)

    def test_retain_grad_hidden_states_attentions(self):
        self.check_backbone_retain_grad()


class PaleBackboneTest(BackboneTesterMixin, unittest.TestCase):
    all_model_classes = (PaleBackbone,)
    config_class = PaleConfig

    def setUp(self):
        self.model_tester = TinyImageModelTester(self, pale_config, **PALE_TESTER)


class PaleForImageClassificationTest(PaleTestMixin, unittest.TestCase):
    all_model_classes = (PaleForImageClassification,)

    def test_for_image_classification(self):
        # SwinModelTester.create_and_check_for_image_classification, greyscale input included
        config, pixel_values, _ = self.model_tester.prepare_config_and_inputs()
        labels = ids_tensor([self.model_tester.batch_size], config.num_labels)
        model = PaleForImageClassification(config).eval()
        with torch.no_grad():
            result = model(pixel_values, labels=labels)
        self.assertEqual(result.logits.shape, (self.model_tester.batch_size, config.num_labels))
        config.num_channels = 1
        model = PaleForImageClassification(config).eval()
        with torch.no_grad():
            result = model(floats_tensor([self.model_tester.batch_size, 1, 32, 32]))
        self.assertEqual(result.logits.shape, (self.model_tester.batch_size, config.num_labels))


class PaleForSemanticSegmentationTest(PaleTestMixin, UperNetLikeTestMixin, unittest.TestCase):
    all_model_classes = (PaleForSemanticSegmentation,)

    test_model_get_set_embeddings = UperNetLikeTestMixin.test_model_get_set_embeddings
    test_hidden_states_output = UperNetLikeTestMixin.test_hidden_states_output
    test_attention_outputs = SwinLikeTestMixin.test_attention_outputs


# ---------------------------------------------------------------------------------------------------------------
# VWFormer (over transformers' Swin, and over our SeMask-Swin and Pale)
# ---------------------------------------------------------------------------------------------------------------


class VWFormerTestMixin(UperNetLikeTestMixin):
    config_class = VWFormerConfig
    config_common_properties = []
    # the varying window attention splits the 1/8 map into 8 x 8 windows: 64 px at least
    tester_kwargs = dict(image_size=64, num_stages=4)
    # VWFormer returns no attentions (UperNetModelTest: has_attentions = False)
    has_attentions = False


class VWFormerOverSwinTest(VWFormerTestMixin, unittest.TestCase):
    all_model_classes = (VWFormerForSemanticSegmentation,)
    get_config = staticmethod(vwformer_swin_config)

    @unittest.skip(
        reason="transformers' SwinBackbone returns its hidden states as reshaped contiguous copies that no output "
        "depends on, so hidden_states[0] has no gradient in transformers itself (its UperNet tests run over ConvNeXt)"
    )
    def test_retain_grad_hidden_states_attentions(self):
        pass


class VWFormerOverSeMaskSwinTest(VWFormerTestMixin, unittest.TestCase):
    all_model_classes = (VWFormerForSemanticSegmentation,)
    get_config = staticmethod(vwformer_semask_swin_config)


class VWFormerOverPaleTest(VWFormerTestMixin, unittest.TestCase):
    all_model_classes = (VWFormerForSemanticSegmentation,)
    get_config = staticmethod(vwformer_pale_config)


# ---------------------------------------------------------------------------------------------------------------
# SeMask-Mask2Former
# ---------------------------------------------------------------------------------------------------------------


class SeMaskMask2FormerModelTest(Mask2FormerLikeTestMixin, unittest.TestCase):
    all_model_classes = (SeMaskMask2FormerModel,)

    def test_semask_mask2former_model(self):
        # Mask2FormerModelTester.create_and_check_mask2former_model
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = SeMaskMask2FormerModel(config).eval()
        with torch.no_grad():
            output = model(**inputs)
        self.assertEqual(
            output.transformer_decoder_last_hidden_state.shape,
            (self.model_tester.batch_size, config.num_queries, config.hidden_dim),
        )
        self.assertIsNotNone(output.pixel_decoder_last_hidden_state)
        self.assertIsNotNone(output.encoder_last_hidden_state)


class SeMaskMask2FormerForSemanticSegmentationTest(Mask2FormerLikeTestMixin, unittest.TestCase):
    all_model_classes = (SeMaskMask2FormerForSemanticSegmentation,)

    def test_semantic_segmentation_head_model(self):
        # Mask2FormerModelTester.create_and_check_mask2former_instance_segmentation_head_model with semantic labels
        config, pixel_values, labels = self.model_tester.prepare_config_and_inputs()
        model = self.head_model_class(config).eval()
        batch_size, size = self.model_tester.batch_size, self.model_tester.image_size
        with torch.no_grad():
            result = model(pixel_values)
            self.assertEqual(result.masks_queries_logits.shape, (batch_size, config.num_queries, size // 4, size // 4))
            self.assertEqual(result.class_queries_logits.shape, (batch_size, config.num_queries, config.num_labels + 1))
            result = model(pixel_values, labels=labels)
        self.assertIsNotNone(result.loss)
        self.assertEqual(result.loss.shape, ())

    def test_model_with_labels(self):
        # Mask2FormerModelTest.test_model_with_labels: a training forward with labels gives a loss
        config, pixel_values, labels = self.model_tester.prepare_config_and_inputs()
        model = self.head_model_class(config)
        outputs = model(pixel_values, labels=labels)
        self.assertTrue(outputs.loss is not None)


class SeMaskMask2FormerMSFaPNTest(SeMaskMask2FormerForSemanticSegmentationTest):
    """The same tests with SeMask's MSFaPN pixel decoder (FeatureAlign inside the deformable-attention decoder; the
    FaPN decoder's FeatureAligns run the package's own model suite, ``TestSeMaskMask2FormerFaPN``)."""

    @staticmethod
    def get_config():
        return semask_mask2former_config(pixel_decoder_type="msfapn")


# ---------------------------------------------------------------------------------------------------------------
# VW-Mask2Former
# ---------------------------------------------------------------------------------------------------------------


class VWMask2FormerForSemanticSegmentationTest(SeMaskMask2FormerForSemanticSegmentationTest):
    """VW-Mask2Former with the plain VW pixel decoder, as Mask2FormerModelTest tests Mask2Former (the deformable one
    and VW-MaskFormer run the package's model suite, ``test_modeling_vw_d2.py``). 128 px: the model pads every
    side to at least 128 (the VW block's windows), so smaller images cost the same and change the expected
    shapes."""

    config_class = VWMask2FormerConfig
    head_model_class = VWMask2FormerForSemanticSegmentation
    all_model_classes = (VWMask2FormerForSemanticSegmentation,)
    tester_kwargs = dict(image_size=128)

    @staticmethod
    def get_config():
        return tiny_vw_mask2former_config(pixel_decoder_type="vw")

    @unittest.skip(
        reason="the VW pixel decoder's widths (512 and 256 channels: 6.9M of its 7.3M parameters) are hard-coded by the original "
        "and are not config values; the rest of the model is tiny"
    )
    def test_model_is_small(self):
        pass

    @unittest.skip(
        reason="from_pretrained maps the torch_dtype alias to dtype before any model class is involved: "
        "SeMaskMask2FormerForSemanticSegmentationTest runs this test (the same Mask2FormerPreTrainedModel loading), "
        "and this model's own loads in bfloat16 run in the bf16 variants of test_eager_matches_sdpa_inference"
    )
    def test_bc_torch_dtype(self):
        pass

    @unittest.skip(
        reason="VW-Mask2Former always checkpoints non-reentrantly (_activation_checkpointing_enable): this run repeats "
        "test_training_gradient_checkpointing_use_reentrant_true's computation, which runs (and "
        "TestVWMask2FormerDeformable compares the gradients with and without checkpointing)"
    )
    def test_training_gradient_checkpointing(self):
        pass

    @unittest.skip(
        reason="VW-Mask2Former always checkpoints non-reentrantly (_activation_checkpointing_enable): this run repeats "
        "test_training_gradient_checkpointing_use_reentrant_true's computation, which runs (and "
        "TestVWMask2FormerDeformable compares the gradients with and without checkpointing)"
    )
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        pass

    # the fp16 variants take 20 s each on the CPU (no fp16 kernels for the VW block's 512-channel convolutions, which
    # the test runs 4 times), and so do the bf16 ones on a CPU where oneDNN has no bf16 kernels (18 s each on an
    # AVX2-only AMD EPYC); the fp32 variants run the same eager and SDPA attention paths, the bf16 ones elsewhere
    for _name in dir(ModelTesterMixin):
        if _name.startswith("test_eager_matches_sdpa_inference_"):
            if "_fp16_" in _name or ("_bf16_" in _name and not ONEDNN_BFLOAT16):
                locals()[_name] = unittest.skip(
                    reason=("fp16" if "_fp16_" in _name else "bf16 (no oneDNN bf16 kernels on this CPU)")
                    + " on the CPU is too slow for the VW block; fp32 runs"
                )(lambda self: None)
    del _name


# ---------------------------------------------------------------------------------------------------------------
# SeMask-MaskFormer
# ---------------------------------------------------------------------------------------------------------------


def semask_maskformer_config() -> SeMaskMaskFormerConfig:
    """A tiny SeMask MaskFormer: the Mask2Former tests' backbone, a 2-layer DETR decoder."""
    backbone = SeMaskSwinConfig(
        **tiny_semask_swin_kwargs(
            depths=[2, 1, 1, 1], semantic_attention_types=["window", "window", "window", "global"]
        )
    )
    decoder = dict(d_model=32, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=64, num_queries=6)
    return SeMaskMaskFormerConfig(
        backbone_config=backbone,
        fpn_feature_size=32,
        mask_feature_size=32,
        decoder_config=decoder,
        **tiny_label_kwargs(),
    )


class SeMaskMaskFormerForSemanticSegmentationTest(Mask2FormerLikeTestMixin, unittest.TestCase):
    """SeMask MaskFormer as MaskFormerModelTest tests MaskFormerForInstanceSegmentation (semantic labels)."""

    config_class = SeMaskMaskFormerConfig
    all_model_classes = (SeMaskMaskFormerForSemanticSegmentation,)

    @staticmethod
    def get_config():
        return semask_maskformer_config()

    @unittest.skip(
        reason="hidden_states are the backbone's stage maps (as every SeMask model's); layer indices would select the "
        "DETR decoder's recorded layers, which this model returns as transformer_decoder_hidden_states"
    )
    def test_can_capture_specific_layers_hidden_states(self):
        pass

    def test_hidden_states_output(self):
        # the backbone's stage maps, the FPN's maps (strides 16, 8, 4), the decoder's input and one state per layer
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        model = SeMaskMaskFormerForSemanticSegmentation(config).eval()
        with torch.no_grad():
            outputs = model(**inputs_dict, output_hidden_states=True)
        self.assertEqual(len(outputs.hidden_states), len(config.backbone_config.depths))
        self.assertEqual(len(outputs.pixel_decoder_hidden_states), 3)
        self.assertEqual(len(outputs.transformer_decoder_hidden_states), config.decoder_config.decoder_layers + 1)

    def test_retain_grad_hidden_states_attentions(self):
        config, pixel_values, labels = self.model_tester.prepare_config_and_inputs()
        config.output_hidden_states = True
        model = SeMaskMaskFormerForSemanticSegmentation(config).train()
        outputs = model(pixel_values, labels=labels)
        retained = {
            "hidden_states": outputs.hidden_states[0],
            "pixel_decoder_hidden_states": outputs.pixel_decoder_hidden_states[0],
            "transformer_decoder_hidden_states": outputs.transformer_decoder_hidden_states[-1],
        }
        for tensor in retained.values():
            tensor.retain_grad()
        outputs.loss.backward(retain_graph=True)
        for name, tensor in retained.items():
            self.assertIsNotNone(tensor.grad, f"{name} has no gradient")

    def test_semantic_segmentation_head_model(self):
        config, pixel_values, labels = self.model_tester.prepare_config_and_inputs()
        model = SeMaskMaskFormerForSemanticSegmentation(config).eval()
        batch_size, size = self.model_tester.batch_size, self.model_tester.image_size
        num_queries = config.decoder_config.num_queries
        with torch.no_grad():
            result = model(pixel_values)
            self.assertEqual(result.masks_queries_logits.shape, (batch_size, num_queries, size // 4, size // 4))
            self.assertEqual(result.class_queries_logits.shape, (batch_size, num_queries, config.num_labels + 1))
            result = model(pixel_values, labels=labels)
        self.assertEqual(result.loss.shape, ())


# ---------------------------------------------------------------------------------------------------------------
# image processors
# ---------------------------------------------------------------------------------------------------------------


def image_height_width(image) -> tuple[int, int]:
    if isinstance(image, np.ndarray):  # channels last (prepare_image_inputs' numpy images)
        return image.shape[0], image.shape[1]
    if isinstance(image, torch.Tensor):  # channels first
        return image.shape[1], image.shape[2]
    width, height = image.size  # PIL
    return height, width


class KeepRatioImageProcessingTester(ImageProcessingTester):
    """Random images of 30-80 px resized with mmcv's ``imrescale(img, (64, 32))`` rule (the documented one: scale
    ``min(L / long side, S / short side)``, sides rounded half up), padded to the largest of the batch."""

    classes = {"torchvision": KeepRatioImageProcessor, "pil": KeepRatioImageProcessorPil}

    def __init__(self, parent, **kwargs):
        kwargs.setdefault("batch_size", 4)
        kwargs.setdefault("min_resolution", 30)
        kwargs.setdefault("max_resolution", 80)
        kwargs.setdefault("do_resize", True)
        kwargs.setdefault("size", {"longest_edge": 64, "shortest_edge": 32})
        kwargs.setdefault("do_normalize", True)
        kwargs.setdefault("image_mean", [0.5, 0.5, 0.5])
        kwargs.setdefault("image_std", [0.5, 0.5, 0.5])
        kwargs.setdefault("num_labels", 4)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # upstream looks the classes up by the test folder's model type in IMAGE_PROCESSOR_MAPPING_NAMES
        return dict(self.classes)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        long_bound, short_bound = self.size["longest_edge"], self.size["shortest_edge"]
        factor = min(long_bound / max(height, width), short_bound / min(height, width))
        return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))

    def padded_size(self, sizes: list[tuple[int, int]]) -> tuple[int, int]:
        return max(h for h, _ in sizes), max(w for _, w in sizes)

    def expected_output_image_shape(self, images):
        sizes = [self.resized_size(*image_height_width(image)) for image in images]
        return (self.num_channels, *self.padded_size(sizes))

    def prepare_post_process_semantic_segmentation_inputs(self):
        # upstream reads size["height"] / size["width"], which a keep-ratio size has not; the output of a model at
        # stride 4 for a 1 x 4 image (the size the target_sizes test asks for), resized to 16 x 64 (logits of another
        # input's shape are refused: their padding would be cropped at the wrong place)
        height, width = 4, 16
        inputs = {
            "outputs": SemanticSegmenterOutput(logits=torch.randn(self.batch_size, self.num_labels, height, width))
        }
        return inputs, {"num_labels": self.num_labels, "height": height, "width": width}


class SeMaskMask2FormerImageProcessingTester(KeepRatioImageProcessingTester):
    """detectron2's ``ResizeShortestEdge(32, max_size=64)``, zero padding to a multiple of 32 of the batch's
    largest image."""

    classes = {"torchvision": SeMaskMask2FormerImageProcessor, "pil": SeMaskMask2FormerImageProcessorPil}

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        short, long = self.size["shortest_edge"], self.size["longest_edge"]
        scale = short / min(height, width)
        new_height, new_width = (short, scale * width) if height < width else (scale * height, short)
        if max(new_height, new_width) > long:
            scale = long / max(new_height, new_width)
            new_height, new_width = new_height * scale, new_width * scale
        return max(1, int(new_height + 0.5)), max(1, int(new_width + 0.5))

    def padded_size(self, sizes):
        height, width = super().padded_size(sizes)
        return height + -height % 32, width + -width % 32

    def prepare_post_process_semantic_segmentation_inputs(self):
        # the output of the model for a 1 x 4 image (the size the target_sizes test asks for): resized to 32 x 128,
        # mask logits at 1/4 of that; without target sizes the scores come at the padded input size
        queries, height, width = 6, 8, 32
        outputs = SeMaskMask2FormerSemanticSegmenterOutput(
            class_queries_logits=torch.randn(self.batch_size, queries, self.num_labels + 1),
            masks_queries_logits=torch.randn(self.batch_size, queries, height, width),
        )
        return {"outputs": outputs}, {"num_labels": self.num_labels, "height": 4 * height, "width": 4 * width}


class KeepRatioImageProcessingTest(
    ImageProcessingTestMixin, PostProcessSemanticSegmentationTestMixin, unittest.TestCase
):
    image_processor_tester_class = KeepRatioImageProcessingTester


class SeMaskMask2FormerImageProcessingTest(
    ImageProcessingTestMixin, PostProcessSemanticSegmentationTestMixin, unittest.TestCase
):
    image_processor_tester_class = SeMaskMask2FormerImageProcessingTester
