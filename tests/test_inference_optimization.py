"""``optimize_for_inference()`` on every family: the dense layers' (and Pale's blocks') weights prepared once for CPU
inference (cast, packed for oneDNN); the outputs are the model's and the prepared copies are what the layers use."""

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from hf_semseg import (
    PaleConfig,
    PaleForSemanticSegmentation,
    SeMaskSwinConfig,
    SeMaskSwinForSemanticSegmentation,
    VWFormerConfig,
    VWFormerForSemanticSegmentation,
)
from hf_semseg.models import modeling_linear
from hf_semseg.models.modeling_linear import OneDNNLinear

from model_suite import (
    FOUR_STAGES,
    ONEDNN_BFLOAT16,
    open_semantic_gates,
    tiny_label_kwargs,
    tiny_pale_kwargs,
    tiny_semask_swin_kwargs,
    tiny_vw_mask2former_config,
    tiny_vw_maskformer_config,
    tiny_vwformer_backbone_config,
    tiny_vwformer_kwargs,
)


pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


def semask_swin():
    config = SeMaskSwinConfig(**tiny_semask_swin_kwargs(), out_features=FOUR_STAGES)
    model = SeMaskSwinForSemanticSegmentation(config)
    open_semantic_gates(model)
    return model


def vwformer_on_semask_swin():
    config = VWFormerConfig(backbone_config=tiny_vwformer_backbone_config("semask_swin"), **tiny_vwformer_kwargs())
    return VWFormerForSemanticSegmentation(config)


def vw_mask2former():
    from hf_semseg import VWMask2FormerForSemanticSegmentation

    return VWMask2FormerForSemanticSegmentation(tiny_vw_mask2former_config())


def vw_maskformer():
    from hf_semseg import VWMaskFormerForSemanticSegmentation

    return VWMaskFormerForSemanticSegmentation(tiny_vw_maskformer_config())


def pale_unfolded():
    return PaleForSemanticSegmentation(
        PaleConfig(**tiny_pale_kwargs(), **tiny_label_kwargs(), out_features=FOUR_STAGES)
    )


FAMILIES = [semask_swin, vwformer_on_semask_swin, vw_mask2former, vw_maskformer, pale_unfolded]


def output_tensors(output) -> list[torch.Tensor]:
    return [value for value in output.values() if isinstance(value, torch.Tensor)]


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16-autocast"])
@pytest.mark.parametrize("build", FAMILIES, ids=lambda build: build.__name__)
def test_optimized_models_compute_their_outputs(build, autocast, monkeypatch):
    """Every family after ``optimize_for_inference()`` (Pale's BatchNorms not folded): every output equals the
    unoptimised model's in float32 (within 1e-5 of the largest value: the same products, bit for bit in our checks)
    and under bfloat16 autocast is as close to the float64 model as the unoptimised one (within 1.5x its error: Pale's
    GELU runs as ``fc1``'s post-op, rounded once, on CPUs where that is the faster), and the dense layers that ran oneDNN's product ran it on their
    prepared weights, each packed once over two forwards."""
    torch.manual_seed(0)
    model = build().eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    packs = []
    real_pack = modeling_linear.PackedInferenceLinear.__init__

    def counting_pack(self, weight, bias, dtype, **options):
        packs.append(weight)
        real_pack(self, weight, bias, dtype, **options)

    monkeypatch.setattr(modeling_linear.PackedInferenceLinear, "__init__", counting_pack)
    with torch.no_grad():
        reference = output_tensors(copy.deepcopy(model).double()(pixel_values.double()))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        expected = output_tensors(model(pixel_values))
        assert not packs
        if build is pale_unfolded:
            model.optimize_for_inference(fold_batch_norm=False)
        else:
            assert model.optimize_for_inference() is model
        optimized = output_tensors(model(pixel_values))
        packed_once = len(packs)
        again = output_tensors(model(pixel_values))
    # where oneDNN has no bfloat16 kernels for this CPU, nothing needs to run on packed weights under autocast
    assert (packed_once > 0 or (autocast and not ONEDNN_BFLOAT16)) and len(packs) == packed_once  # once only
    assert len({id(weight) for weight in packs}) == packed_once
    for ours, theirs, repeated, exact in zip(optimized, expected, again, reference, strict=True):
        torch.testing.assert_close(repeated, ours, atol=0, rtol=0)
        scale = theirs.abs().max().item() if theirs.numel() else 1.0
        if not autocast:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * scale)
        elif theirs.numel():
            # bfloat16: as close to the float64 model as the unoptimised one (within 1.5x its error)
            unoptimised_error = (theirs.double() - exact).abs().max().item()
            assert unoptimised_error > 0  # bfloat16 rounding shows
            assert (ours.double() - exact).abs().max().item() <= 1.5 * unoptimised_error


def pale_folded():
    model = pale_unfolded()
    torch.nn.init.uniform_(model.backbone.encoder.stages[0].layers[0].attention.query.norm.running_var, 0.5, 2.0)
    return model


@pytest.mark.parametrize("build", [semask_swin, pale_folded], ids=["semask_fpn", "pale"])
def test_folded_batch_norms_follow_a_train_mode_forward(build):
    """A train-mode forward updates BatchNorm's running statistics in its kernel without bumping their version
    counters: the folded convolutions kept the statistics of before (SeMask-FPN 13% off, Pale 1e-3)."""
    torch.manual_seed(0)
    model = build().eval().optimize_for_inference()
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(pixel_values)  # prepares (folds the norms)
        model.train()
        model(pixel_values + 2.0)  # new running statistics
        model.eval()
        optimized = model(pixel_values).logits
        model.clear_inference_optimization()
        plain = model(pixel_values).logits
    scale = plain.abs().max().item()
    torch.testing.assert_close(optimized, plain, rtol=0, atol=1e-5 * scale)


def holders_with_preparations(model) -> int:
    """How many modules of ``model`` hold prepared inference weights now."""
    return sum(
        bool(getattr(module, "inference_weights", None) and module.inference_weights.by_dtype)
        for module in model.modules()
    )


@pytest.mark.parametrize("build", FAMILIES, ids=lambda build: build.__name__)
def test_prepared_weights_follow_a_fused_optimizer_step(build):
    """A fused optimiser (``fused=True``; transformers' Trainer defaults to ``adamw_torch_fused``) writes the
    parameters in place without bumping their version counters: an optimised model evaluated after a step kept
    computing with the weights of before it (SeMask-FPN 0.22 of the largest logit off, Pale 0.21, VWFormer 0.12)."""
    torch.manual_seed(0)
    model = build().eval().optimize_for_inference()
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(pixel_values)  # prepares
    assert holders_with_preparations(model) > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    model.train()
    model(pixel_values).logits.pow(2).mean().backward()
    weight = next(parameter for parameter in model.parameters() if parameter.grad is not None)
    version = weight._version
    optimizer.step()
    assert weight._version == version  # what the stamps cannot see
    model.eval()
    with torch.no_grad():
        optimized = model(pixel_values).logits
        plain = copy.deepcopy(model).clear_inference_optimization()(pixel_values).logits
    scale = plain.abs().max().item()
    torch.testing.assert_close(optimized, plain, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("build", FAMILIES, ids=lambda build: build.__name__)
def test_converting_an_optimized_model_drops_its_preparations(build):
    """``.to(dtype)``, ``.half()``, ``.float()`` (``nn.Module._apply``) drop every prepared copy, made again on the
    next inference forward: the converted weights may take the address the old ones freed, where the stamps (version,
    address) could not tell them apart (after a float32 -> bfloat16 -> float32 round trip a bias-less layer served the
    copy of its unrounded weights in up to half of the trials), and the copies for a dtype the model no longer has
    were kept until cleared."""
    torch.manual_seed(0)
    model = build().eval().optimize_for_inference()
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(pixel_values)
        assert holders_with_preparations(model) > 0
        model.to(torch.bfloat16)
        assert holders_with_preparations(model) == 0
        model.float()
        optimized = model(pixel_values).logits
        assert holders_with_preparations(model) > 0
        plain = copy.deepcopy(model).clear_inference_optimization()(pixel_values).logits
    scale = plain.abs().max().item()
    torch.testing.assert_close(optimized, plain, rtol=0, atol=1e-5 * scale)


def test_a_dense_layer_packs_once_and_again_after_a_change():
    """A ``OneDNNLinear`` optimised for inference packs its weight on the first inference forward per dtype, reuses
    it, packs again after an in-place change, keeps the unpacked path with gradients on, and copies keep the setting
    without the packed tensors; a subclass (a forward of its own) is left alone; clearing turns it off."""

    class Adapted(OneDNNLinear):
        def forward(self, hidden_states):
            return super().forward(hidden_states) * 2.0

    torch.manual_seed(0)
    model = torch.nn.Sequential(OneDNNLinear(8, 6), Adapted(6, 4))
    modeling_linear.optimize_linear_layers_for_inference(model)
    layer = model[0]
    assert layer.inference_weights is not None and model[1].inference_weights is None
    tokens = torch.randn(3, 5, 8)
    with torch.no_grad():
        first = layer(tokens)
        packed = layer.inference_weights.by_dtype[torch.float32][-1]
        torch.testing.assert_close(first, torch.nn.functional.linear(tokens, layer.weight, layer.bias))
        assert layer(tokens) is not first and layer.inference_weights.by_dtype[torch.float32][-1] is packed
        layer.weight.mul_(-1.0)
        changed = layer(tokens)
    assert layer.inference_weights.by_dtype[torch.float32][-1] is not packed
    torch.testing.assert_close(changed, -first + 2 * layer.bias)
    layer(tokens).sum().backward()  # gradients on: the plain product, a gradient for the weight
    assert layer.weight.grad is not None
    for copied in (copy.deepcopy(layer), __import__("pickle").loads(__import__("pickle").dumps(layer))):
        assert copied.inference_weights.settings == {} and not copied.inference_weights.by_dtype
        with torch.no_grad():
            torch.testing.assert_close(copied(tokens), changed, atol=0, rtol=0)
    modeling_linear.optimize_linear_layers_for_inference(model, enabled=False)
    assert layer.inference_weights is None


def test_a_saved_model_optimizes_in_a_fresh_process_without_hf_semseg(tmp_path):
    """The step is part of the saved code: a Pale model loaded with ``trust_remote_code=True`` where hf-semseg cannot
    be imported optimises for inference (its blocks' weights prepared, BatchNorms folded) and computes the logits of
    the model that was saved (float32, within 1e-5)."""
    torch.manual_seed(0)
    model = pale_unfolded().eval()
    model.save_pretrained(tmp_path / "model")
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values).logits
    torch.save({"pixel_values": pixel_values, "logits": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["hf_semseg"] = None
        import torch
        from transformers import AutoModelForSemanticSegmentation
        model = AutoModelForSemanticSegmentation.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        io = torch.load({str(tmp_path / "io.pt")!r})
        model = model.eval().optimize_for_inference()
        with torch.no_grad():
            logits = model(io["pixel_values"]).logits
        blocks = [m for m in model.modules() if type(m).__name__ == "PaleBlock"]
        print(json.dumps({{
            "difference": (logits - io["logits"]).abs().max().item(),
            "scale": io["logits"].abs().max().item(),
            "prepared": all(torch.float32 in block.inference_weights.by_dtype for block in blocks),
            "blocks": len(blocks),
            "module": type(model).__module__,
            "hf_semseg": [m for m, v in sys.modules.items() if m.startswith("hf_semseg") and v],
        }}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["prepared"] and report["blocks"] == sum(model.config.depths) and report["hf_semseg"] == []
    assert report["module"].startswith("transformers_modules.")
    assert report["difference"] <= 1e-5 * report["scale"]  # folded BatchNorms: within rounding
