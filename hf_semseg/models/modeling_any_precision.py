"""Any-precision weights: one checkpoint of 8-bit weight codes that serves every narrower width, after "Vertical
Layering of Quantized Neural Networks" (Wu, He, Tan, Qi, Huang; arXiv 2212.05326, TPAMI 2023).

The paper stores a network's weights once, as integers whose most significant bits form a basic layer and whose every
lower bit is an enhance layer: the b-bit network is the basic layer plus its enhance layers, and the weights are
trained once for all widths ("once QAT"). No code was released; what follows is our reconstruction, and the choices the
paper leaves open are marked as ours.

**Representation** (weight-only, per output channel, on every layer of exactly the types ``nn.Linear`` /
``nn.Conv2d`` but the patch embedding, the final classifiers and the SDN neck's ``fuse`` layers: other layer types,
such as transformers' ``nn.MultiheadAttention`` in the Mask2Former decoders, FaPN's deformable convolutions and the SDN
neck's SDC, keep float weights at every width):

- 8-bit codes ``q = clamp(floor(w / s), -128, 127)`` with ``s = max|w_c| / 127.5`` per output channel ``c``, stored as
  two's-complement ``int8`` next to ``s`` (float32).
- The b-bit codes are the top b bits of the 8-bit codes, an arithmetic shift ``q_b = q >> (8 - b)`` (the cascade
  downsampling; ours: the paper does not give the operator). Dropping an enhance layer is dropping the lowest bit.
- Dequantisation is mid-rise (ours): ``w_b = (q_b + 1/2) * s * 2^(8 - b)``. Since ``floor(floor(x) / 2^k) =
  floor(x / 2^k)``, ``q_b`` is exactly the floor quantiser of ``w`` with step ``s * 2^(8 - b)``, so every width is a
  dedicated mid-rise quantiser of its own, with the largest error half a step (no bias from truncation), and the two
  extreme levels ``+-127.5 s`` at 8 bits are the channel's extreme weights. The round-to-nearest comparison per width
  is in ``benchmarks/any_precision_demo.py``.

**Two forms** of a quantised layer, the same state dict (``weight_codes``, ``weight_scale``, ``bias``):

- codes (inference, what ``from_pretrained`` builds): the codes and scales are buffers; the layer computes with the
  dequantised active width, and ``layer.weight`` reads that dequantised weight.
- float master weights (once QAT, :meth:`AnyPrecisionMixin.use_float_master_weights`): ``weight`` is a float
  parameter again; the forward pass quantises it to the active width with a straight-through estimator, and the state
  dict holds its 8-bit codes (so a training checkpoint keeps every width's network exactly; the master weights restart
  from the 8-bit codes when loaded).

Portable module: imports torch and its sibling configuration module only.
"""

import re
from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .configuration_utils_segmentation import STORAGE_WEIGHT_BITS
from .modeling_linear import OneDNNLinear, onednn_linear


#: modules kept in floating point unless ``config.weight_bits_float_modules`` says otherwise (``re.search`` on module
#: names): the patch embedding that meets the pixels (Swin and SeMask-Swin, ConvNeXt, MiT, Pale's first stage), the
#: final classifiers (decode / auxiliary heads, the mask classifiers' class predictor), and the SDN-style neck's
#: ``fuse`` layers, which carry the features through the neck (initialised to [I | 0]: the mid-rise grid has no zero,
#: so quantised they added half a step of every diffusion channel, 0.25 of it at 2 bits, and the neck turned on for
#: an any-precision folder did not start as the identity)
DEFAULT_FLOAT_MODULES = (
    r"(^|\.)embeddings\.(patch_embeddings\.)?projection$",
    r"(^|\.)embeddings\.patch_embeddings$",
    r"(^|\.)stages\.0\.patch_embeddings\.proj$",
    r"(^|\.)stages\.0\.patch_embed\.projection$",
    r"(^|\.)classifier$",
    r"(^|\.)class_predictor$",
    r"(^|\.)neck\.levels\.\d+\.fuse$",
)

_HALF_RANGE = 2 ** (STORAGE_WEIGHT_BITS - 1) - 0.5  # 127.5: the extreme mid-rise level, in steps


def check_weight_width(bits, what: str = "weight width") -> int:
    """``bits`` as an int between 1 and the stored 8, or a ``ValueError`` naming it."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= STORAGE_WEIGHT_BITS:
        raise ValueError(f"{what} must be an integer between 1 and {STORAGE_WEIGHT_BITS}, got {bits!r}")
    return bits


def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # (out,) -> (out, 1, ...) to broadcast over a weight of ``like``'s rank
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8-bit codes (``int8``, the weight's shape) and per-output-channel scales (float32, ``(out,)``) of a weight.
    An all-zero channel gets the smallest positive scale (its weights dequantise to about 1e-38)."""
    weight = weight.detach().float()
    scale = weight.flatten(1).abs().amax(dim=1) / _HALF_RANGE
    scale = scale.clamp_min(torch.finfo(torch.float32).tiny)
    codes = torch.floor(weight / _per_channel(scale, weight)).clamp_(
        -(2 ** (STORAGE_WEIGHT_BITS - 1)), 2 ** (STORAGE_WEIGHT_BITS - 1) - 1
    )
    return codes.to(torch.int8), scale


def top_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """The b-bit codes: the top ``bits`` bits of the 8-bit two's-complement codes (an arithmetic right shift)."""
    shift = STORAGE_WEIGHT_BITS - bits
    return torch.bitwise_right_shift(codes, shift) if shift else codes


def dequantize_weight(codes: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """The b-bit weight of 8-bit ``codes``: ``(q_b + 1/2) * scale * 2^(8 - b)`` (mid-rise), in ``scale``'s dtype."""
    step = scale * float(2 ** (STORAGE_WEIGHT_BITS - bits))
    return (top_bits(codes, bits).to(scale.dtype) + 0.5) * _per_channel(step, codes)


def fake_quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight`` quantised to ``bits`` through the 8-bit codes, with a straight-through gradient (identity)."""
    quantized = dequantize_weight(*quantize_weight(weight), bits).to(weight.dtype)
    # the value is exactly ``quantized`` (the added difference is an exact zero), the gradient flows to ``weight``
    return quantized + (weight - weight.detach())


class VerticalLayeredWeight:
    """The quantised-weight behaviour shared by :class:`VerticalLayeredLinear` and :class:`VerticalLayeredConv2d`
    (listed first among their bases): the two forms, the active width and the state-dict rules."""

    active_bits: int = STORAGE_WEIGHT_BITS

    @classmethod
    def from_float(cls, layer: nn.Module, trainable: bool, active_bits: int):
        """The quantised twin of a float ``layer``, sharing its bias parameter; ``trainable`` keeps its weight
        parameter as the float master weight, otherwise the layer holds the codes."""
        quantized = cls._empty_like(layer)
        quantized.bias = layer.bias
        quantized.active_bits = active_bits
        quantized.train(layer.training)
        if trainable:
            quantized.weight = layer.weight
        else:
            quantized._hold_codes(*quantize_weight(layer.weight), layer.weight.dtype)
        return quantized

    def _hold_codes(self, codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> None:
        """The codes form: ``codes`` and the scales in the float weight's ``dtype`` (the dtype the dequantised weight
        computes in: a model built or loaded in bfloat16 keeps its bias in bfloat16, and a float32 scale would make
        a float32 weight that ``F.linear`` refuses beside them)."""
        self._parameters.pop("weight", None)
        self.register_buffer("weight_codes", codes)
        self.register_buffer("weight_scale", scale.to(dtype))

    @property
    def holds_codes(self) -> bool:
        return "weight_codes" in self._buffers

    def _weight_shape(self) -> torch.Size:
        return self.weight_codes.shape if self.holds_codes else self.weight.shape

    def __getattr__(self, name: str):
        if name == "weight" and "weight_codes" in self.__dict__.get("_buffers", {}):
            return dequantize_weight(self.weight_codes, self.weight_scale, self.active_bits)
        return super().__getattr__(name)

    def quantized_weight(self) -> torch.Tensor:
        """The weight of the active width: the dequantised codes, or the master weight through the STE."""
        if self.holds_codes:
            return dequantize_weight(self.weight_codes, self.weight_scale, self.active_bits)
        return fake_quantize_weight(self.weight, self.active_bits)

    def use_codes(self) -> None:
        """Codes form: the 8-bit codes of the current weight become buffers; the float parameter goes."""
        if not self.holds_codes:
            self._hold_codes(*quantize_weight(self.weight), self.weight.dtype)

    def use_float_master_weight(self) -> None:
        """Float master form (once QAT): the weight is a float parameter again, the dequantised 8-bit codes."""
        if self.holds_codes:
            codes, scale = self._buffers.pop("weight_codes"), self._buffers.pop("weight_scale")
            self.weight = nn.Parameter(dequantize_weight(codes, scale, STORAGE_WEIGHT_BITS))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.holds_codes:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        codes, scale = quantize_weight(self.weight)
        destination[prefix + "weight_codes"] = codes
        destination[prefix + "weight_scale"] = scale
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        """Reads the codes (either form) or a float ``weight`` (quantised by the codes form), and the bias. With
        ``load_state_dict(..., assign=True)`` (``local_metadata["assign_to_params_buffers"]``, PyTorch's loading into
        a model built on the meta device) the layer takes the state dict's tensors instead of copying into its own,
        as PyTorch's modules do."""
        codes_key, scale_key, float_key = prefix + "weight_codes", prefix + "weight_scale", prefix + "weight"
        assign = local_metadata.get("assign_to_params_buffers", False)
        with torch.no_grad():
            if codes_key in state_dict and scale_key in state_dict:
                codes, scale = state_dict[codes_key], state_dict[scale_key]
                shape = self._weight_shape()
                if codes.shape != shape or scale.shape != shape[:1] or codes.dtype != torch.int8:
                    errors.append(
                        f"{codes_key}: int8 codes of shape {tuple(shape)} and {scale_key} of shape {tuple(shape[:1])} "
                        f"expected, got {codes.dtype} {tuple(codes.shape)} and {tuple(scale.shape)}"
                    )
                else:
                    self._load_codes(codes, scale, assign)
            elif float_key in state_dict:
                weight = state_dict[float_key]
                if weight.shape != self._weight_shape():
                    errors.append(
                        f"{float_key}: shape {tuple(self._weight_shape())} expected, got {tuple(weight.shape)}"
                    )
                elif self.holds_codes:
                    codes, scale = quantize_weight(weight)
                    self._load_codes(codes, scale.to(weight.dtype) if assign else scale, assign)
                else:
                    self._load_parameter("weight", weight, assign)
            else:  # neither a float weight nor both codes and scales: the absent ones of the pair are missing
                missing_keys.extend(key for key in (codes_key, scale_key) if key not in state_dict)
            if self.bias is not None:
                if prefix + "bias" in state_dict:
                    self._load_parameter("bias", state_dict[prefix + "bias"], assign)
                else:
                    missing_keys.append(prefix + "bias")
        if strict:
            own = {prefix + name for name in ("weight", "weight_codes", "weight_scale", "bias")}
            for key in state_dict:
                if key.startswith(prefix) and "." not in key[len(prefix) :] and key not in own:
                    unexpected_keys.append(key)

    def _load_codes(self, codes: torch.Tensor, scale: torch.Tensor, assign: bool) -> None:
        """Loads 8-bit ``codes`` and their ``scale`` into either form (the float master form holds them dequantised);
        ``assign``: takes the tensors (their device and dtype) instead of copying into the layer's own."""
        if self.holds_codes:
            if assign:
                self._buffers["weight_codes"], self._buffers["weight_scale"] = codes, scale
            else:
                self.weight_codes.copy_(codes)
                self.weight_scale.copy_(scale)
        elif assign:
            weight = dequantize_weight(codes, scale.float(), STORAGE_WEIGHT_BITS).to(scale.dtype)
            self._load_parameter("weight", weight, assign)
        else:
            self.weight.copy_(dequantize_weight(codes.to(self.weight.device), scale.float(), STORAGE_WEIGHT_BITS))

    def _load_parameter(self, name: str, value: torch.Tensor, assign: bool) -> None:
        """Loads ``value`` into the parameter ``name``: copied, or with ``assign`` taken as the parameter (keeping the
        layer's ``requires_grad``), as PyTorch's ``load_state_dict(..., assign=True)`` does."""
        parameter = self._parameters[name]
        if not assign:
            parameter.copy_(value)
        elif isinstance(value, nn.Parameter):
            setattr(self, name, value)
        else:
            setattr(self, name, nn.Parameter(value, requires_grad=parameter.requires_grad))

    def extra_repr(self) -> str:
        form = "codes" if self.holds_codes else "float master"
        return f"{super().extra_repr()}, weight_bits={self.active_bits} ({form})"


class VerticalLayeredLinear(VerticalLayeredWeight, nn.Linear):
    """``nn.Linear`` with any-precision weights (:class:`VerticalLayeredWeight`)."""

    @staticmethod
    def _empty_like(layer: nn.Linear) -> "VerticalLayeredLinear":
        return VerticalLayeredLinear(layer.in_features, layer.out_features, bias=False, device="meta")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return onednn_linear(hidden_states, self.quantized_weight(), self.bias)


class VerticalLayeredConv2d(VerticalLayeredWeight, nn.Conv2d):
    """``nn.Conv2d`` with any-precision weights (:class:`VerticalLayeredWeight`)."""

    @staticmethod
    def _empty_like(layer: nn.Conv2d) -> "VerticalLayeredConv2d":
        return VerticalLayeredConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=False,
            padding_mode=layer.padding_mode,
            device="meta",
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(hidden_states, self.quantized_weight(), self.bias)


_QUANTIZED_TWINS = {
    nn.Linear: VerticalLayeredLinear,
    OneDNNLinear: VerticalLayeredLinear,
    nn.Conv2d: VerticalLayeredConv2d,
}


def replace_with_vertical_layers(model: nn.Module, float_modules, trainable: bool, active_bits: int) -> list[str]:
    """Swaps every plain ``nn.Linear`` / ``nn.Conv2d`` of ``model`` whose name matches none of ``float_modules``
    (regular expressions, ``re.search``) for its quantised twin, in place; a layer registered under several names is
    swapped once and stays shared. Returns the names of the layers kept in floating point."""
    patterns = [re.compile(pattern) for pattern in float_modules]
    twins: dict[int, tuple[nn.Module, nn.Module]] = {}  # id(float layer): (float layer, its twin)
    kept = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            twin_class = _QUANTIZED_TWINS.get(type(child))
            if twin_class is None:
                continue
            if any(pattern.search(name) for pattern in patterns):
                kept.append(name)
                continue
            if id(child) not in twins:
                twins[id(child)] = (child, twin_class.from_float(child, trainable, active_bits))
            setattr(parent, child_name, twins[id(child)][1])
    # a layer also held in a plain list or tuple attribute (transformers' Mask2Former prediction blocks call
    # ``self.layers``, the registered children in a list) is swapped there too, or the float layer would still run
    for module in model.modules():
        for attribute, value in list(vars(module).items()):
            if isinstance(value, (list, tuple)) and any(id(item) in twins for item in value):
                swapped = [twins[id(item)][1] if id(item) in twins else item for item in value]
                if isinstance(value, list):
                    value[:] = swapped
                else:
                    setattr(module, attribute, type(value)(swapped))
    return kept


def active_weight_bits(model) -> int | None:
    """The weight width an any-precision model computes with (``config.active_weight_bits``, by default its widest
    ``weight_bits``: a folder saved after ``set_weight_bits(2)`` computes at 2 bits), or None for a float model."""
    config = getattr(model, "config", None)
    if not getattr(config, "weight_bits", None):
        return None
    return config.active_weight_bits or max(config.weight_bits)


class RecomputeAtForwardWidth:
    """A checkpointing function (transformers' ``_gradient_checkpointing_func``, installed by
    :meth:`AnyPrecisionMixin._set_gradient_checkpointing`) whose recompute runs at the weight width its forward ran at.

    The width is the quantised layers' state: once QAT runs the model at every width before one backward pass, which
    recomputes the checkpointed layers when the model is back at the widest, so without this every narrower width's
    gradients would be the widest width's recompute's. The checkpointed function is wrapped to set the model's width of
    its forward around itself, in the forward and in the recompute alike. An object holding ``model``, not a closure:
    ``copy.deepcopy`` of the model gives the copy's layers a function that sets the copy's width."""

    def __init__(self, model: nn.Module, checkpoint_function: Callable):
        self.model = model
        self.checkpoint_function = checkpoint_function

    def __call__(self, function: Callable, *args, **kwargs):
        bits = active_weight_bits(self.model)
        if bits is None:  # float weights: nothing to restore
            return self.checkpoint_function(function, *args, **kwargs)
        return self.checkpoint_function(partial(self._at_width, bits, function), *args, **kwargs)

    def _at_width(self, bits: int, function: Callable, *args, **kwargs):
        current = active_weight_bits(self.model)
        if current == bits:
            return function(*args, **kwargs)
        self.model.set_weight_bits(bits)
        try:
            return function(*args, **kwargs)
        finally:
            self.model.set_weight_bits(current)


class AnyPrecisionMixin:
    """The any-precision methods of every family's ``PreTrainedModel`` (through ``SegmentationModelDefaults``).

    A config with ``weight_bits`` builds the model with quantised layers holding 8-bit codes (what ``from_pretrained``
    loads); :meth:`to_any_precision` turns a float model into that form in one call (post-training, by rounding to the
    mid-rise grid), :meth:`set_weight_bits` switches the width at run time, and :meth:`use_float_master_weights`
    prepares once-QAT training."""

    def post_init(self):
        super().post_init()
        if getattr(self.config, "weight_bits", None):
            self._swap_in_vertical_layers(trainable=False)

    def initialize_weights(self):
        """transformers' initialisation of what a checkpoint did not fill, for quantised layers too: a layer in the
        codes form whose codes were not loaded (a layer the checkpoint lacks, such as an SDN-style neck turned on for
        an any-precision folder, or a classifier resized by ``ignore_mismatched_sizes``) is initialised in its float
        form by the family's rules, then quantised. Its ``weight`` is otherwise a dequantised copy that the
        initialisation writes and drops, and the codes kept uninitialised memory (NaN logits)."""
        unloaded = [
            layer
            for _, layer in self.vertical_layers()
            if layer.holds_codes and not getattr(layer.weight_codes, "_is_hf_initialized", False)
        ]
        for layer in unloaded:
            layer.use_float_master_weight()
        super().initialize_weights()
        for layer in unloaded:
            layer.use_codes()

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Callable | None = None, every_n_layers: int = 1
    ):
        """transformers' activation checkpointing, its function wrapped so that a checkpointed layer recomputes at the
        weight width its forward ran at (:class:`RecomputeAtForwardWidth`; float models: the same function)."""
        if gradient_checkpointing_func is None:
            gradient_checkpointing_func = checkpoint
        if enable and not isinstance(gradient_checkpointing_func, RecomputeAtForwardWidth):
            gradient_checkpointing_func = RecomputeAtForwardWidth(self, gradient_checkpointing_func)
        super()._set_gradient_checkpointing(
            enable=enable, gradient_checkpointing_func=gradient_checkpointing_func, every_n_layers=every_n_layers
        )

    def _swap_in_vertical_layers(self, trainable: bool) -> None:
        float_modules = self.config.weight_bits_float_modules
        replace_with_vertical_layers(
            self, DEFAULT_FLOAT_MODULES if float_modules is None else float_modules, trainable, active_weight_bits(self)
        )

    def vertical_layers(self) -> Iterator[tuple[str, VerticalLayeredWeight]]:
        """``(name, layer)`` of every quantised layer."""
        for name, module in self.named_modules():
            if isinstance(module, VerticalLayeredWeight):
                yield name, module

    def to_any_precision(self, weight_bits=(8, 4, 2), active_bits: int | None = None, trainable: bool = False):
        """Quantises this float model's layers in place (``trainable=False``: 8-bit codes, by rounding to the mid-rise
        grid; ``True``: float master weights for once QAT) and records ``weight_bits`` in the config. Returns the
        model."""
        if not isinstance(weight_bits, (list, tuple)):
            raise ValueError(f"weight_bits must be a list of widths, e.g. [8, 4, 2], got {weight_bits!r}")
        widths = [check_weight_width(bits, "weight_bits entry") for bits in weight_bits]
        if not widths:
            raise ValueError("to_any_precision needs at least one weight width, got an empty weight_bits")
        if len(set(widths)) != len(widths):  # the config refuses them when the saved folder is loaded
            raise ValueError(f"weight_bits must list distinct widths, got {widths}")
        if any(True for _ in self.vertical_layers()):
            raise ValueError(
                f"{type(self).__name__} is already any-precision (weight_bits={self.config.weight_bits}); "
                "use set_weight_bits to change the width"
            )
        active = check_weight_width(max(widths) if active_bits is None else active_bits, "active_bits")
        self.config.weight_bits = widths
        self.config.active_weight_bits = active
        self._swap_in_vertical_layers(trainable)
        return self

    def set_weight_bits(self, bits: int):
        """Computes with the top ``bits`` bits of every quantised layer's codes from now on (any width 1 ... 8).
        Returns the model."""
        if not getattr(self.config, "weight_bits", None):
            raise ValueError(
                f"{type(self).__name__} has float weights (config.weight_bits is None): call to_any_precision first"
            )
        check_weight_width(bits, "set_weight_bits: bits")
        for _, layer in self.vertical_layers():
            layer.active_bits = bits
        self.config.active_weight_bits = bits
        return self

    def use_float_master_weights(self):
        """Once-QAT form: every quantised layer's weight becomes a float parameter (its dequantised 8-bit codes), seen
        through the straight-through estimator. Returns the model."""
        for _, layer in self.vertical_layers():
            layer.use_float_master_weight()
        return self

    def use_weight_codes(self):
        """Inference form: every quantised layer holds the 8-bit codes of its current weight. Returns the model."""
        for _, layer in self.vertical_layers():
            layer.use_codes()
        return self


__all__ = [
    "DEFAULT_FLOAT_MODULES",
    "AnyPrecisionMixin",
    "RecomputeAtForwardWidth",
    "active_weight_bits",
    "VerticalLayeredConv2d",
    "VerticalLayeredLinear",
    "VerticalLayeredWeight",
    "dequantize_weight",
    "fake_quantize_weight",
    "quantize_weight",
    "replace_with_vertical_layers",
    "top_bits",
]
