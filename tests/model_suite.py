"""The common model suite, reused by every family.

A family's test module subclasses :class:`SegmentationModelSuite` and provides a tiny config; every check below then
runs against it. Each test asserts numbers (equal logits, lower loss, non-zero gradients), not only shapes.
"""

import contextlib
import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

from conftest import REPO_ROOT


def assert_same_weights(state_dict: dict, reloaded: dict) -> None:
    """Every tensor of a reloaded model's state dict is the original's, bit for bit, under the same names."""
    assert list(reloaded) == list(state_dict)
    differ = [name for name, tensor in state_dict.items() if not torch.equal(tensor, reloaded[name])]
    assert differ == [], f"tensors differ after the reload: {differ}"


def reloaded_logits_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    return (actual - expected).abs().max().item()


def reload_tolerance(expected: torch.Tensor) -> float:
    """How far a reloaded model's logits may lie from the original's, with the same weights bit for bit: the
    converters' reload check's bound (``RELOAD_TOLERANCE * max(1, max |logit|)``). Not 0: weights loaded from
    safetensors sit at other memory alignments, where oneDNN's kernels may sum in another order (seen on an AVX2 CPU
    on one thread: a 1x1 convolution of a weight at a 56-byte offset, 2e-5 on logits of 41; bit for bit on the
    AVX-512 CPUs of earlier runs)."""
    from hf_semseg.conversion.common import RELOAD_TOLERANCE

    return RELOAD_TOLERANCE * max(1.0, expected.abs().max().item())


#: whether oneDNN has bfloat16 kernels for this CPU (AVX-512 BF16 or AMX): without them the models' prepared bfloat16
#: products never run, and under bfloat16 autocast the modules compute as they do without ``optimize_for_inference``
ONEDNN_BFLOAT16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()

#: the four classes of every tiny test config
TINY_LABELS = {0: "sky", 1: "tree", 2: "road", 3: "car"}


def tiny_label_kwargs() -> dict:
    """``id2label`` / ``label2id`` of :data:`TINY_LABELS`, for a config constructor."""
    return {"id2label": dict(TINY_LABELS), "label2id": {label: index for index, label in TINY_LABELS.items()}}


def tiny_mask2former_kwargs(**overrides) -> dict:
    """Keyword arguments of a tiny ``SeMaskMask2FormerConfig`` head (pixel decoder, decoder, loss sampling) with the
    tiny labels; the caller adds ``backbone_config``."""
    values = dict(
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_layers=1,
        encoder_feedforward_dim=64,
        num_attention_heads=4,
        dim_feedforward=64,
        decoder_layers=3,
        num_queries=6,
        train_num_points=256,
        **tiny_label_kwargs(),
    )
    values.update(overrides)
    return values


def tiny_semask_swin_kwargs(**overrides) -> dict:
    """Arguments of a SeMask-Swin small enough for the tests (16 channels, windows of 4, semantic windows of 3, the
    four tiny classes); ``overrides`` replace or add values."""
    values = dict(
        embed_dim=16,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 2, 4],
        window_size=4,
        semantic_window_size=3,
        drop_path_rate=0.1,
        **tiny_label_kwargs(),
    )
    values.update(overrides)
    return values


def tiny_pale_kwargs(**overrides) -> dict:
    """Arguments of a Pale Transformer small enough for the tests (16 channels, pales of 3 and 2)."""
    values = dict(
        embed_dim=16, depths=[1, 1, 2, 1], num_heads=[2, 2, 4, 4], pale_sizes=[3, 3, 2, 2], drop_path_rate=0.1
    )
    values.update(overrides)
    return values


#: the four backbone stages the decode heads read (``out_features`` of a backbone config)
FOUR_STAGES = ["stage1", "stage2", "stage3", "stage4"]


def tiny_vwformer_kwargs(**overrides) -> dict:
    """Keyword arguments of a tiny ``VWFormerConfig`` head (64 channels, 2 heads) with the tiny labels; the caller adds
    ``backbone_config``."""
    values = dict(decoder_hidden_size=64, num_attention_heads=2, **tiny_label_kwargs())
    values.update(overrides)
    return values


def tiny_vwformer_backbone_config(name: str):
    """A tiny config of a backbone VWFormer takes: ``"swin"``, ``"convnext"`` (transformers' ``ConvNextBackbone``,
    which needs 32 px per side on its own), ``"mit"`` (SegFormer's encoder with the released key reductions 8/4/2/1,
    29 px per side on its own), ``"semask_swin"`` or ``"pale"``."""
    from transformers import ConvNextConfig, SegformerConfig, SwinConfig

    from hf_semseg import PaleConfig, SeMaskSwinConfig

    if name == "swin":
        return SwinConfig(
            embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4, out_features=FOUR_STAGES
        )
    if name == "convnext":
        return ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], out_features=FOUR_STAGES)
    if name == "mit":
        return SegformerConfig(
            depths=[1, 1, 1, 1], hidden_sizes=[16, 24, 32, 48], num_attention_heads=[1, 1, 2, 2], sr_ratios=[8, 4, 2, 1]
        )
    if name == "semask_swin":
        return SeMaskSwinConfig(**tiny_semask_swin_kwargs(depths=[1, 1, 1, 1]), out_features=FOUR_STAGES)
    if name == "pale":
        return PaleConfig(**tiny_pale_kwargs(depths=[1, 1, 1, 1]), out_features=FOUR_STAGES)
    raise ValueError(f"no tiny VWFormer backbone {name!r}")


def tiny_swin(**overrides):
    """A tiny transformers Swin with its four stages (the backbone of the VW detectron2 heads)."""
    from transformers import SwinConfig

    values = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4, out_features=FOUR_STAGES)
    values.update(overrides)
    return SwinConfig(**values)


def tiny_vw_mask2former_config(**overrides):
    """A tiny VW-Mask2Former (deformable pixel decoder unless overridden); the VW block's widths are the original's
    hard-coded ones."""
    from hf_semseg import VWMask2FormerConfig

    values = dict(
        backbone_config=tiny_swin(),
        pixel_decoder_type="vw_deformable",
        hidden_dim=32,
        num_attention_heads=4,
        dim_feedforward=64,
        encoder_layers=1,
        encoder_feedforward_dim=64,
        decoder_layers=4,  # the query prediction and one masked-attention layer per multi-scale level
        num_queries=6,
        train_num_points=256,
        **tiny_label_kwargs(),
    )
    values.update(overrides)
    return VWMask2FormerConfig(**values)


#: a tiny DETR decoder (MaskFormer's ``decoder_config``)
TINY_DETR_DECODER_KWARGS = dict(
    d_model=32, decoder_attention_heads=4, decoder_ffn_dim=64, decoder_layers=3, num_queries=6
)


def tiny_vw_maskformer_config(**overrides):
    """A tiny VW-MaskFormer (8 VW heads, with the short-cut branch)."""
    from hf_semseg import VWMaskFormerConfig

    values = dict(
        backbone_config=tiny_swin(),
        vw_num_heads=8,
        vw_use_short_cut=True,
        decoder_config=dict(TINY_DETR_DECODER_KWARGS),
        **tiny_label_kwargs(),
    )
    values.update(overrides)
    return VWMaskFormerConfig(**values)


def open_semantic_gates(model, value: float = 0.5) -> None:
    """SeMask's gates (``gamma``) start at 0, so a fresh SeMask model is a plain Swin; open them so that the semantic
    path matters."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".gamma"):
                parameter.fill_(value)


def perturb_batch_norms(module) -> list:
    """Moves the running statistics and affine parameters of every ``BatchNorm2d`` in ``module`` away from the
    identity (from the global seed), so that folding a norm into the layer before it shows in the outputs. Returns the
    norms."""
    norms = [child for child in module.modules() if isinstance(child, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    return norms


def record_results(monkeypatch, owner: type, name: str) -> list:
    """Patches method ``name`` of class ``owner`` to record what each call returns (in call order) and returns that
    record; the calls compute what they computed."""
    results = []
    real = getattr(owner, name)

    def recording(self, *args, **kwargs):
        results.append(real(self, *args, **kwargs))
        return results[-1]

    monkeypatch.setattr(owner, name, recording)
    return results


def perturb_sdn_fuse(model, scale: float = 0.05) -> None:
    """Moves the SDN neck's fuse convolutions off their identity start (seeded), so every neck parameter reaches the
    loss (at the identity start only ``fuse`` gets a gradient, as a zero-initialised residual branch)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for level in model.neck.levels:
            level.fuse.weight.add_(scale * torch.randn(level.fuse.weight.shape, generator=generator))


def perturb_deformable_attention(model, scale: float = 0.01) -> None:
    """Mask2Former's deformable attention starts with zero sampling-offset and attention-weight matrices (Deformable
    DETR's init): the level embedding, which reaches the loss only through them, would get an all-zero gradient.
    Gives them small seeded values."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("sampling_offsets.weight", "attention_weights.weight")):
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))


#: the first DETR decoder layer's queries enter with zero content (``tgt``, as in the original MaskFormer): every
#: query's value in its self-attention is the same bias, so the attention pattern (q/k projections) and
#: ``v_proj.weight`` get only float32 rounding noise as gradient
DETR_FIRST_LAYER_WITHOUT_GRADIENT = tuple(
    f"model.transformer_module.decoder.layers.0.self_attn.{name}"
    for name in ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight")
)


def perturb_detr_first_layer(model) -> None:
    """The first DETR layer's self-attention output is its value and output biases (zero query content), zero at init:
    gives them seeded values so that its output projection and LayerNorm scale reach the loss."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in ("v_proj.bias", "o_proj.bias"):
            parameter = model.get_parameter(f"model.transformer_module.decoder.layers.0.self_attn.{name}")
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))


#: the models' fused paths and the answer that switches each off: module-level predicates (patched wherever a
#: module of the models package holds them) and methods, ``(class name, method)``
FUSED_PATH_SWITCHES = {
    "folds_into_previous_layer": False,
    "folds_attention_projections": False,
    "recomputes_layer_norm": False,
    "convolution_splits_over_inputs": False,
    "packed_convolution_dtype": None,
    ("TransformerMLP", "recomputes_gelu"): False,
    ("TransformerMLP", "activates_in_place"): False,
    ("PaleBlock", "runs_inference_forward"): False,
}


@contextlib.contextmanager
def module_by_module():
    """Every fused path of :data:`FUSED_PATH_SWITCHES` off: the models call each of their modules."""
    modules = [module for name, module in sys.modules.items() if name.startswith("hf_semseg.models.")]
    with pytest.MonkeyPatch.context() as patch:
        for switch, answer in FUSED_PATH_SWITCHES.items():
            off = lambda *args, answer=answer, **kwargs: answer  # noqa: E731
            if isinstance(switch, tuple):
                class_name, method = switch
                owner = next(getattr(m, class_name) for m in modules if class_name in vars(m))
                patch.setattr(owner, method, off)
            else:
                found = [module for module in modules if switch in vars(module)]
                assert found, f"no module of the models package holds {switch}"
                for module in found:
                    patch.setattr(module, switch, off)
        yield


def tensors_in(output) -> list[torch.Tensor]:
    """The tensors of a module's output (a tensor, a tuple / list / dict / ``ModelOutput`` of them, nested), copied
    (a later in-place layer may overwrite them)."""
    if isinstance(output, torch.Tensor):
        return [output.detach().clone()]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [tensor for item in output for tensor in tensors_in(item)]
    return []


class SegmentationModelSuite:
    """Subclasses set ``model_class`` and implement :meth:`get_config` and :meth:`get_image_processor`."""

    model_class = None
    #: input size of the default batch (H, W)
    image_size = (64, 64)
    #: output stride of ``logits``
    logits_stride = 4
    #: sizes that are not multiples of any window / patch / stride of the model
    odd_sizes = ((37, 53), (65, 31), (20, 90))
    #: equality tolerance of repeated computations (batching, reload)
    atol = 1e-5
    #: AdamW learning rate of the one-step training test
    learning_rate = 1e-3
    #: parameters the architecture leaves without a real gradient: theirs must be float32 rounding noise, below 1e-4
    #: of the largest gradient of ``gradient_scale_parameter``
    parameters_without_gradient = ()
    gradient_scale_parameter = None
    #: the loss samples random points (Mask2Former's): both passes of a gradient comparison are seeded alike
    loss_is_random = False
    #: config values that switch off every source of randomness in training mode
    deterministic_overrides = {
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
        "classifier_dropout_prob": 0.0,
    }

    # -- to provide ----------------------------------------------------------------------------------------------
    def get_config(self):
        raise NotImplementedError

    def get_image_processor(self):
        raise NotImplementedError

    def prepare_for_gradient_check(self, model) -> None:
        """Hook: make every parameter influence the loss (e.g. open gates that are initialised to zero)."""

    # -- helpers -------------------------------------------------------------------------------------------------
    def make_model(self, seed: int = 0, **config_overrides):
        torch.manual_seed(seed)
        config = self.get_config()
        for key, value in config_overrides.items():
            setattr(config, key, value)
        model = self.model_class(config)
        self.prepare_for_gradient_check(model)
        return model.eval()

    def make_inputs(self, batch_size: int = 2, size=None, seed: int = 1):
        height, width = size or self.image_size
        generator = torch.Generator().manual_seed(seed)
        pixel_values = torch.randn(batch_size, 3, height, width, generator=generator)
        num_labels = self.get_config().num_labels
        labels = torch.randint(0, num_labels, (batch_size, height, width), generator=generator)
        labels[torch.rand(batch_size, height, width, generator=generator) < 0.1] = 255
        return pixel_values, labels

    def assert_same_computation(self, actual: torch.Tensor, expected: torch.Tensor) -> None:
        """Equal up to float32 rounding, measured relative to the largest logit (convolution algorithms differ with
        the batch size)."""
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(actual, expected, atol=self.atol * scale, rtol=0)

    def expected_logits_size(self, height: int, width: int) -> tuple[int, int]:
        return -(-height // self.logits_stride), -(-width // self.logits_stride)

    # -- the suite -----------------------------------------------------------------------------------------------
    def test_config_round_trip(self, tmp_path):
        config = self.get_config()
        config.save_pretrained(tmp_path)
        reloaded = AutoConfig.from_pretrained(tmp_path)
        assert type(reloaded).__name__ == type(config).__name__
        original, restored = config.to_dict(), reloaded.to_dict()
        for key in ("transformers_version", "_name_or_path"):
            original.pop(key, None), restored.pop(key, None)
        assert restored == original
        assert type(config).from_dict(config.to_dict()).to_dict() == config.to_dict()

    def test_save_load_gives_equal_outputs(self, tmp_path):
        model = self.make_model()
        pixel_values, _ = self.make_inputs()
        with torch.no_grad():
            expected = model(pixel_values).logits
        model.save_pretrained(tmp_path)
        reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
        assert type(reloaded) is self.model_class
        with torch.no_grad():
            actual = reloaded(pixel_values).logits
        assert_same_weights(model.state_dict(), reloaded.state_dict())
        assert reloaded_logits_difference(actual, expected) <= reload_tolerance(expected)

    def test_an_id2label_override_when_loading_is_validated(self, tmp_path):
        """``from_pretrained(..., id2label=...)`` sets the labels after the config validated itself: classes keyed
        1 and 2 loaded as 2 channels named wrongly (the pipeline failed later with a bare KeyError)."""
        self.make_model().save_pretrained(tmp_path)
        labels = {1: "tree", 2: "road"}
        with pytest.raises(ValueError, match=r"id2label has the keys \[1, 2\]; expected the class indices 0 \.\.\. 1"):
            AutoModelForSemanticSegmentation.from_pretrained(tmp_path, id2label=labels, ignore_mismatched_sizes=True)

    def test_a_model_built_on_the_meta_device_loads_its_state_dict_by_assignment(self):
        """PyTorch's meta-device loading: build under ``torch.device("meta")``, then ``load_state_dict(...,
        assign=True)``. Buffers no state dict holds (relative position indices, the loss's class weights) would stay
        on the meta device, where a CPU table indexed by them read uninitialised memory (wrong logits, no error):
        such a load is refused, naming a buffer, before anything is loaded; built first (``to_empty`` then
        ``init_weights``) the model loads to the original's logits. A model without such buffers loads directly
        (any-precision layers too: they took no state by assignment before, and failed in the forward)."""
        model = self.make_model()
        pixel_values, _ = self.make_inputs()
        with torch.no_grad():
            expected = model(pixel_values).logits
        with torch.device("meta"):
            built = self.model_class(model.config)
        unbuilt = [
            name
            for module in built.modules()
            for name, buffer in module._buffers.items()
            if name in module._non_persistent_buffers_set and buffer is not None
        ]
        if unbuilt:
            on_meta = [name for name, parameter in built.named_parameters() if parameter.is_meta]
            with pytest.raises(ValueError, match=rf"load_state_dict\(assign=True\): the buffers \S*{unbuilt[0]}"):
                built.load_state_dict(model.state_dict(), assign=True)
            # nothing loaded (transformers' Mask2Former builds its level_embed with torch.Tensor: never on meta)
            assert [name for name, parameter in built.named_parameters() if parameter.is_meta] == on_meta != []
            built.to_empty(device="cpu")
            built.init_weights()
        built.load_state_dict(model.state_dict(), assign=True)
        assert not any(tensor.is_meta for tensor in (*built.parameters(), *built.buffers()))
        with torch.no_grad():
            actual = built.eval()(pixel_values).logits
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)

    def test_logits_shape_and_return_dict(self):
        model = self.make_model()
        pixel_values, _ = self.make_inputs()
        with torch.no_grad():
            output = model(pixel_values)
            as_tuple = model(pixel_values, return_dict=False)
        assert output.logits.shape == (2, model.config.num_labels, *self.expected_logits_size(*self.image_size))
        torch.testing.assert_close(as_tuple[0], output.logits, atol=0, rtol=0)

    def test_output_hidden_states_chooses_by_index(self):
        """transformers' ``output_hidden_states=[0, -1]``: the chosen states as ``True`` gives them, None elsewhere
        (SeMask's Mask2Former and MaskFormer returned all of them)."""
        model = self.make_model()
        pixel_values, _ = self.make_inputs(batch_size=1)
        with torch.no_grad():
            every = model(pixel_values, output_hidden_states=True).hidden_states
            chosen = model(pixel_values, output_hidden_states=[0, -1]).hidden_states
        assert len(chosen) == len(every) > 2
        assert all(state is None for state in chosen[1:-1])
        for index in (0, -1):
            torch.testing.assert_close(chosen[index], every[index], atol=0, rtol=0)

    def test_labels_outside_the_classes_are_an_error_naming_them(self):
        model = self.make_model()
        pixel_values, labels = self.make_inputs(batch_size=1)
        labels[0, 3, 4] = 7
        with pytest.raises(ValueError, match=r"values \[7\] outside \[0, 3\] and the ignore index 255"):
            model(pixel_values, labels=labels)

    def test_batch_of_n_equals_n_single_forwards(self):
        model = self.make_model()
        pixel_values, _ = self.make_inputs(batch_size=3)
        with torch.no_grad():
            batched = model(pixel_values).logits
            singles = torch.cat([model(pixel_values[i : i + 1]).logits for i in range(3)])
        self.assert_same_computation(batched, singles)

    @pytest.mark.parametrize("size_index", [0, 1, 2])
    def test_odd_input_sizes(self, size_index):
        height, width = self.odd_sizes[size_index]
        model = self.make_model()
        pixel_values, labels = self.make_inputs(batch_size=2, size=(height, width))
        with torch.no_grad():
            output = model(pixel_values, labels=labels)
            singles = torch.cat([model(pixel_values[i : i + 1]).logits for i in range(2)])
        assert output.logits.shape[-2:] == self.expected_logits_size(height, width)
        assert torch.isfinite(output.logits).all() and torch.isfinite(output.loss)
        self.assert_same_computation(output.logits, singles)

    def test_gradients_reach_every_trainable_parameter(self):
        """Without dropout and stochastic depth, which drop a whole branch's gradient for a draw (SeMask-MaskFormer's
        last block's MLP, for the draws a changed initialisation left the forward)."""
        model = self.make_model(**self.deterministic_overrides).train()
        pixel_values, labels = self.make_inputs()
        model(pixel_values, labels=labels).loss.backward()
        gradients = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        if self.parameters_without_gradient:
            scale = gradients[self.gradient_scale_parameter].abs().max()
            for name in self.parameters_without_gradient:
                gradient = gradients.pop(name)
                assert gradient is None or gradient.abs().max() < 1e-4 * scale, name
        no_grad = [name for name, gradient in gradients.items() if gradient is None]
        zero_grad = [name for name, gradient in gradients.items() if gradient is not None and not gradient.any()]
        assert not no_grad, f"parameters without gradient: {no_grad}"
        assert not zero_grad, f"parameters with an all-zero gradient: {zero_grad}"

    def test_one_optimizer_step_lowers_the_loss(self):
        model = self.make_model(**self.deterministic_overrides).train()
        pixel_values, labels = self.make_inputs()
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.learning_rate)
        torch.manual_seed(0)
        loss_before = model(pixel_values, labels=labels).loss
        loss_before.backward()
        optimizer.step()
        optimizer.zero_grad()
        torch.manual_seed(0)
        with torch.no_grad():
            loss_after = model(pixel_values, labels=labels).loss
        assert loss_after < loss_before, (loss_before.item(), loss_after.item())

    def test_training_with_gradient_checkpointing_matches(self):
        """Gradients, and the buffers a training step updates: the recompute of a checkpointed layer in the backward
        pass updated its BatchNorms' running statistics a second time (Pale, the VW attentions)."""
        model = self.make_model(**self.deterministic_overrides).train()
        unchecked = copy.deepcopy(model)
        pixel_values, labels = self.make_inputs()
        if self.loss_is_random:
            torch.manual_seed(3)
        unchecked(pixel_values, labels=labels).loss.backward()
        reference = {name: p.grad.clone() for name, p in unchecked.named_parameters() if p.grad is not None}
        model.activation_checkpointing_enable()
        if self.loss_is_random:
            torch.manual_seed(3)
        model(pixel_values, labels=labels).loss.backward()
        for name, p in model.named_parameters():
            if name in reference:
                torch.testing.assert_close(p.grad, reference[name], atol=1e-5, rtol=1e-4, msg=name)
        buffers = dict(unchecked.named_buffers())
        for name, buffer in model.named_buffers():
            torch.testing.assert_close(buffer, buffers[name], atol=1e-6, rtol=1e-5, msg=name)

    @pytest.mark.parametrize("mode", ["inference", "optimized", "training"])
    def test_a_hook_on_any_module_sees_every_call_of_it(self, mode):
        """The fused paths (folded norms and projections, convolutions split over their inputs, recomputing autograd
        functions, Pale's direct kernel calls, prepared weights) compute some modules without calling them; a forward
        hook on one of those modules turns off the paths that skip it. Reference: every module hooked and every fused
        path switched off (:data:`FUSED_PATH_SWITCHES`), module by module. Hooked in groups of modules far apart in
        the module order (the layers of one fusion fall into different groups), each module is called as often as
        there, with the same outputs, and the logits stay the unhooked model's. ``optimized``: after
        ``optimize_for_inference()``; ``training``: train mode, gradients on."""
        model = self.make_model(**self.deterministic_overrides)
        if mode == "optimized":
            model.optimize_for_inference()
        model.train(mode == "training")
        pixel_values, _ = self.make_inputs()
        named = [(name, module) for name, module in model.named_modules() if name]

        def run(hooked):
            calls = {name: [] for name, _ in hooked}
            handles = [
                module.register_forward_hook(lambda _, args, output, name=name: calls[name].append(tensors_in(output)))
                for name, module in hooked
            ]
            try:
                with torch.set_grad_enabled(mode == "training"):
                    torch.manual_seed(0)
                    logits = model(pixel_values).logits.detach()
            finally:
                for handle in handles:
                    handle.remove()
            return logits, calls

        plain_logits, _ = run([])
        with module_by_module():
            reference_logits, reference = run(named)
        self.assert_same_computation(reference_logits, plain_logits)
        assert sum(map(len, reference.values())) > len(named) // 2  # most modules take part in a forward
        groups = 12
        for first in range(groups):
            logits, calls = run(named[first::groups])
            self.assert_same_computation(logits, plain_logits)
            for name, outputs in calls.items():
                expected = reference[name]
                assert len(outputs) == len(expected), f"{name}: hooked, {len(outputs)} calls seen of {len(expected)}"
                for got, want in zip(outputs, expected):
                    assert [t.shape for t in got] == [t.shape for t in want], name
                    for actual, wanted in zip(got, want):
                        if not wanted.is_floating_point():  # masks, indices
                            assert torch.equal(actual, wanted), name
                            continue
                        scale = max(1.0, wanted.abs().max().item()) if wanted.numel() else 1.0
                        torch.testing.assert_close(actual, wanted, atol=10 * self.atol * scale, rtol=0, msg=name)

    def test_eager_attention_matches_sdpa(self):
        model = self.make_model()
        pixel_values, _ = self.make_inputs()
        with torch.no_grad():
            sdpa_logits = model(pixel_values).logits
            model.set_attn_implementation("eager")
            eager_logits = model(pixel_values).logits
        torch.testing.assert_close(eager_logits, sdpa_logits, atol=1e-4, rtol=1e-4)

    def test_reload_in_fresh_process_uses_only_saved_code(self, tmp_path):
        """A saved folder loads with ``trust_remote_code=True`` from its own code alone: with hf_semseg importable
        (installed) no ``hf_semseg`` module is imported, and with the package then blocked a second saved copy loads
        all the same (its modules imported anew, under their own folder's name); the weights equal the in-process
        model's bit for bit and the logits within :func:`reload_tolerance`, the image-segmentation pipeline knows the saved class (no "is not supported" error
        logged), and the saved modules are the package's files unchanged.

        Both loads share one fresh process (its interpreter and torch start once): the first one proves that nothing
        imported so far is hf_semseg's, so the second one runs as it would in a process of its own."""
        states = ("importable", "blocked")  # in this order: once blocked, the package stays blocked
        model = self.make_model()
        processor = self.get_image_processor()
        for state in states:  # one copy per load: each load imports the copy's own modules
            model.save_pretrained(tmp_path / state)
            processor.save_pretrained(tmp_path / state)
        pixel_values, _ = self.make_inputs()
        with torch.no_grad():
            expected = model(pixel_values).logits
        io = {"pixel_values": pixel_values, "logits": expected, "state_dict": model.state_dict()}
        torch.save(io, tmp_path / "io.pt")
        script = textwrap.dedent(
            f"""
            import sys, json
            from importlib.util import find_spec
            import torch
            from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline
            from transformers.pipelines import base as pipeline_base
            from transformers.testing_utils import CaptureLogger
            io = torch.load({str(tmp_path / "io.pt")!r})
            reports = {{}}
            for state in {states!r}:
                if state == "blocked":
                    sys.modules["hf_semseg"] = None
                else:
                    assert find_spec("hf_semseg"), "hf_semseg is not importable in the test's environment"
                folder = {str(tmp_path)!r} + "/" + state
                model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
                processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
                with torch.no_grad():
                    logits = model(io["pixel_values"]).logits
                with CaptureLogger(pipeline_base.logger) as captured:  # the saved code lists the class for it
                    pipeline("image-segmentation", model=model, image_processor=processor)
                state_dict = model.state_dict()
                reports[state] = {{
                    "pipeline_log": captured.out,
                    "max_diff": (logits - io["logits"]).abs().max().item(),
                    "weights_differ": sorted(
                        key for key, value in io["state_dict"].items()
                        if key not in state_dict or not torch.equal(state_dict[key], value)
                    ) + sorted(set(state_dict) - set(io["state_dict"])),
                    "model_module": type(model).__module__,
                    "processor_module": type(processor).__module__,
                    "processor": type(processor).__name__,
                    "hf_semseg_modules": sorted(m for m, v in sys.modules.items() if m.startswith("hf_semseg") and v),
                }}
            print(json.dumps(reports))
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        reports = json.loads(result.stdout.strip().splitlines()[-1])
        assert list(reports) == list(states)
        for state, report in reports.items():
            assert report["hf_semseg_modules"] == [], state
            assert report["weights_differ"] == [], state
            assert report["max_diff"] <= reload_tolerance(expected), (state, report["max_diff"])
            assert "is not supported" not in report["pipeline_log"], report["pipeline_log"]
            # the copy's own modules, imported under its folder's name (not the other copy's, already imported)
            assert report["model_module"].startswith(f"transformers_modules.{state}."), report["model_module"]
            assert report["processor_module"].startswith(f"transformers_modules.{state}."), report["processor_module"]
            assert report["processor"] == type(processor).__name__, state
        model_folder = REPO_ROOT / "hf_semseg" / "models"
        for state in states:
            saved_files = {path.name for path in (tmp_path / state).iterdir()}
            assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= saved_files
            for module in (tmp_path / state).glob("*.py"):  # copied as they are, nothing rewritten after the save
                assert module.read_bytes() == (model_folder / module.name).read_bytes(), module.name
        assert REPO_ROOT.name not in result.stderr  # nothing was imported from the repository

    def test_image_segmentation_pipeline(self):
        model = self.make_model()
        processor = self.get_image_processor()
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
        from transformers.pipelines import base as pipeline_base
        from transformers.testing_utils import CaptureLogger

        with CaptureLogger(pipeline_base.logger) as captured:
            segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
        assert "is not supported" not in captured.out, captured.out  # hf-semseg's models are known to the pipeline
        segments = segmenter(image, subtask="semantic")
        assert segments, "the pipeline returned no segment"
        inputs = processor(image, return_tensors="pt")
        with torch.no_grad():
            expected = processor.post_process_semantic_segmentation(model(**inputs), target_sizes=[(48, 80)])[0]
        coverage = np.zeros((48, 80), dtype=int)
        for segment in segments:
            mask = np.array(segment["mask"]) > 0
            assert mask.shape == (48, 80)
            label_id = model.config.label2id[segment["label"]]
            assert (expected.numpy()[mask] == label_id).all()
            coverage += mask
        assert (coverage == 1).all(), "segments must tile the image exactly once"

    def test_auto_image_processor_round_trip(self, tmp_path):
        processor = self.get_image_processor()
        processor.save_pretrained(tmp_path)
        self.get_config().save_pretrained(tmp_path)
        reloaded = AutoImageProcessor.from_pretrained(tmp_path)
        assert type(reloaded) is type(processor)
        original, restored = processor.to_dict(), reloaded.to_dict()
        for key in ("_processor_class", "auto_map"):  # auto_map is written by save_pretrained
            original.pop(key, None), restored.pop(key, None)
        assert restored == original
