"""Model-side pieces every family shares: output switches, input and label checks, the pixel-wise losses and the
common init.

Portable module: imports torch, transformers and its sibling configuration module only; the modeling modules of this
folder import it as a sibling, and ``save_pretrained`` copies it next to them. Returning a tuple when
``return_dict=False`` is transformers' own ``can_return_tuple``.
"""

import functools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
)
from transformers.models.swin.modeling_swin import eager_attention_forward
from transformers.models.upernet.modeling_upernet import UperNetFCNHead
from transformers.utils import logging

from .modeling_any_precision import AnyPrecisionMixin
from .modeling_linear import (
    PLAIN_LINEAR_TYPES,
    OneDNNLinear,
    calls_hooks,
    linear_backward,
    needs_gradient,
    onednn_runs,
    optimize_linear_layers_for_inference,
    training_linear,
)
from .modeling_sdn import SDNLevel, SDNNeck, init_sdn_weights


logger = logging.get_logger(__name__)


def batch_norm_statistics_updated_once(forward: Callable) -> Callable:
    """Decorates the ``forward`` of a gradient-checkpointed layer that holds BatchNorms: the backward pass recomputes
    the forward in training mode, which updated the running statistics a second time (twice the momentum's step,
    ``num_batches_tracked`` 2 per step: a model trained with gradient checkpointing evaluated otherwise, up to 5e-2
    off after 3 steps). The statistics the recompute (inside the autograd engine) updates are put back."""

    @functools.wraps(forward)
    def forward_tracking_statistics_once(self, *args, **kwargs):
        recomputing = (
            getattr(self, "gradient_checkpointing", False)
            and self.training
            and torch._C._current_graph_task_id() != -1  # inside a backward pass: the checkpoint's recompute
        )
        if not recomputing:
            return forward(self, *args, **kwargs)
        # the recompute must save what the forward saved (torch's check), so the norms run as they did, on copies of
        # their statistics; the originals are put back untouched (an in-place restore would change a tensor the
        # recomputed graph saved: reentrant checkpointing's backward then fails)
        swapped = [
            (module, name, buffer)
            for module in self.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            for name, buffer in module._buffers.items()
            if name in ("running_mean", "running_var", "num_batches_tracked") and buffer is not None
        ]
        for module, name, buffer in swapped:
            module._buffers[name] = buffer.clone()
        try:
            return forward(self, *args, **kwargs)
        finally:
            for module, name, buffer in swapped:
                module._buffers[name] = buffer

    return forward_tracking_statistics_once


def check_backbone_stages(model_name: str, out_features, num_stages: int) -> None:
    """A segmentation model whose head reads the backbone's ``num_stages`` stages refuses a config that selects
    others (transformers' backbone default, ``out_features`` unset, is the last stage only), naming the setting that
    fixes it."""
    stages = [f"stage{index}" for index in range(1, num_stages + 1)]
    if list(out_features) != stages:
        raise ValueError(
            f"{model_name} takes the backbone's {num_stages} stages, but config.out_features is {list(out_features)} "
            f"(unset means the last stage only, as transformers' backbones): set out_features={stages}"
        )


class SegmentationModelDefaults(AnyPrecisionMixin):
    """Class attributes every family's ``PreTrainedModel`` shares (listed first among its bases): image input,
    activation checkpointing, attention through SDPA or eager (window biases are additive masks, so no flash / flex),
    ``accepts_loss_kwargs = False`` (the segmentation losses are pixel means, which Trainer must not rescale under
    gradient accumulation), and the any-precision weights of ``config.weight_bits`` (:class:`AnyPrecisionMixin`)."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    accepts_loss_kwargs = False

    def __init__(self, config, *inputs, **kwargs):
        # transformers sets the values given to ``from_pretrained`` (and a user sets ``config.x = y``) after the
        # config checked itself: check them again before they build layers (a bad value would otherwise build a
        # model that computes something else, or fail inside torch without naming the setting). The checks of the
        # config's constructor and of ``save_pretrained`` (``PreTrainedConfig.validate``), so the same messages; raised
        # as the check's own ValueError / TypeError (the strict dataclass error wraps it), as the models always did
        try:
            config.validate()
        except Exception as error:
            if isinstance(error.__cause__, (ValueError, TypeError)):
                raise error.__cause__ from None
            raise
        super().__init__(config, *inputs, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, refusing ``assign=True`` into a model whose non-persistent buffers are on
        the meta device (built under ``torch.device("meta")``): those buffers (relative position indices, the loss's
        class weights) are computed when the model is built and are in no state dict, so they would stay on the meta
        device, and a CPU index read through a meta one gives uninitialised memory: wrong logits, no error. Raised
        before anything is loaded."""
        if assign:
            unbuilt = [
                f"{module_name}.{name}" if module_name else name
                for module_name, module in self.named_modules()
                for name, buffer in module._buffers.items()
                if buffer is not None and buffer.is_meta and name in module._non_persistent_buffers_set
            ]
            if unbuilt:
                more = f" and {len(unbuilt) - 3} more" if len(unbuilt) > 3 else ""
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict(assign=True): the buffers {', '.join(unbuilt[:3])}{more} "
                    "are on the meta device and in no state dict (the model computes them when it is built); build "
                    "them first: model.to_empty(device=...) then model.init_weights(), then load_state_dict (or "
                    "build the model on a device, or load it with from_pretrained)"
                )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def optimize_for_inference(self):
        """Prepares the model's dense layers once for CPU inference, as ``torch.jit.optimize_for_inference`` does
        for deployment; returns the model (changed in place). Where a :class:`OneDNNLinear` runs oneDNN's product at
        inference (the CPU, float32 or bfloat16 / bfloat16 autocast, no gradient), it uses a copy of its weight cast
        to that dtype and packed in oneDNN's layout (:class:`PackedInferenceLinear`), made on the first such forward
        per dtype, instead of casting and reordering the weight in every call. The values are the same products
        (bit for bit in our checks); parameters, state dict, saving, training, tracing and other devices are
        unchanged; changed weights (in place, ``load_state_dict``, an optimiser step, ``.to()``) are prepared again,
        a change through ``.data`` is not (call this again). Costs a copy of the dense layers' weights per dtype
        until :meth:`clear_inference_optimization`. Pale models also prepare their blocks' and conv embeddings'
        convolutions, SeMask-Swin models their Semantic-FPN head's conv modules."""
        optimize_linear_layers_for_inference(self)
        return self

    def clear_inference_optimization(self):
        """Undoes :meth:`optimize_for_inference`: drops the prepared weights; returns the model."""
        optimize_linear_layers_for_inference(self, enabled=False)
        return self

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """``set_attn_implementation`` works: every attention layer with more than one implementation reads
        ``config._attn_implementation`` on each call (:func:`attention_function`, transformers' attention
        interface). transformers decides this from the module source: it looks for
        ``ALL_ATTENTION_FUNCTIONS.get_interface(``. Our layers call :func:`attention_function` instead, so without
        this override it would refuse the switch with a warning, and the model would keep SDPA."""
        return True

    def _initialize_weights(self, module, is_custom_code=False):
        """Runs ``_init_weights`` on every module not yet initialised, as transformers does for its own models.

        transformers treats a model from outside its package (ours, saved remote code included) as custom code and
        then skips every module whose own parameters and buffers are all flagged as loaded, which vacuously includes
        every module that has none of its own: the branches of ``_init_weights`` written for container modules
        (patch embeddings, decode-head conv modules and classifiers, the varying-window attention, Mask2Former's
        deformable attention and decoder layers) never ran, and a parameter missing from a checkpoint there (a patch
        embedding resized by ``ignore_mismatched_sizes``) kept uninitialised memory. That skip protects remote code
        that writes parameters in place; every ``_init_weights`` here (and Mask2Former's, which this reuses) uses
        transformers' ``initialization`` functions, which leave tensors flagged as loaded untouched, so running it on
        every module cannot overwrite a loaded weight."""
        already_initialised = getattr(module, "_is_hf_initialized", False)
        super()._initialize_weights(module, is_custom_code=False)
        if not already_initialised and isinstance(module, (SDNLevel, SDNNeck)):
            # the SDN-style neck's own init (identity at the start), over the family's generic conv / norm rules
            # that reached its children first
            init_sdn_weights(module, init=init)


class GeluLinearFunction(torch.autograd.Function):
    """``F.linear(F.gelu(hidden_states), weight, bias)`` that saves ``hidden_states`` only and recomputes the GELU in
    the backward pass. Autograd would keep both the GELU's input (for its own backward) and its output (for the linear
    layer's weight gradient), two ``mlp_ratio * C`` maps per block; recomputing an elementwise GELU gives the same
    values bit for bit, so the gradients are the ones autograd computes, for one map less of training memory.

    Under autocast the forward's linear layer runs in the autocast dtype (its weight and bias cast, as autocast casts
    them), and the backward computes in that dtype too and returns the gradients in the parameters' dtype, as
    autograd's cast nodes do."""

    @staticmethod
    def forward(ctx, hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(hidden_states, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return training_linear(F.gelu(hidden_states), weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        hidden_states, weight = ctx.saved_tensors
        compute_dtype = grad_output.dtype  # the forward output's: the autocast dtype, or the weight's without autocast
        activated = F.gelu(hidden_states).to(compute_dtype)
        grad_activated, grad_weight, grad_bias = linear_backward(
            grad_output, activated, weight.to(compute_dtype), ctx.bias_dtype is not None
        )
        grad_bias = None if grad_bias is None else grad_bias.to(ctx.bias_dtype)
        grad_hidden = torch.ops.aten.gelu_backward(grad_activated.to(hidden_states.dtype), hidden_states)
        return grad_hidden, grad_weight.to(weight.dtype), grad_bias


class LayerNormLinearFunction(torch.autograd.Function):
    """``F.linear(F.layer_norm(hidden_states), weight, bias)`` that saves the LayerNorm's input and statistics only and
    recomputes its output in the backward pass (the same kernel on the same inputs: the same values bit for bit).
    Autograd would keep both the LayerNorm's input and its output (the linear layer's input), two maps."""

    @staticmethod
    def forward(ctx, hidden_states, norm_weight, norm_bias, eps: float, weight, bias):
        normalized_shape = (hidden_states.shape[-1],)
        normalized, mean, rstd = torch.native_layer_norm(hidden_states, normalized_shape, norm_weight, norm_bias, eps)
        ctx.save_for_backward(hidden_states, mean, rstd, norm_weight, norm_bias, weight)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return training_linear(normalized, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        hidden_states, mean, rstd, norm_weight, norm_bias, weight = ctx.saved_tensors
        normalized_shape = (hidden_states.shape[-1],)
        normalized = torch.native_layer_norm(hidden_states, normalized_shape, norm_weight, norm_bias, ctx.eps)[0]
        grad_normalized, grad_weight, grad_bias = linear_backward(grad_output, normalized, weight, ctx.has_bias)
        grad_hidden, grad_norm_weight, grad_norm_bias = torch.ops.aten.native_layer_norm_backward(
            grad_normalized, hidden_states, normalized_shape, mean, rstd, norm_weight, norm_bias, [True, True, True]
        )
        return grad_hidden, grad_norm_weight, grad_norm_bias, None, grad_weight, grad_bias


def recomputes_layer_norm(norm: nn.Module, linear: nn.Module, hidden_states: torch.Tensor) -> bool:
    """Whether :func:`layer_norm_linear` runs ``linear(norm(hidden_states))`` as :class:`LayerNormLinearFunction`:
    a training step that builds a graph, a plain ``nn.LayerNorm`` (affine, over the last axis) and ``nn.Linear``
    without hooks (:func:`calls_hooks`), not under autocast. Other layer types (quantised, adapted), and hooked
    layers, run as they are."""
    return (
        torch.is_grad_enabled()
        and norm.training
        and type(norm) is nn.LayerNorm
        and type(linear) in PLAIN_LINEAR_TYPES
        and norm.elementwise_affine
        and norm.bias is not None
        and len(norm.normalized_shape) == 1
        and not torch.is_autocast_enabled(hidden_states.device.type)
        and not calls_hooks(norm, linear)
    )


def layer_norm_linear(norm: nn.LayerNorm, linear: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """``linear(norm(hidden_states))``; where :func:`recomputes_layer_norm`, as :class:`LayerNormLinearFunction`: the
    same values and gradients, one map less kept for the backward pass."""
    if recomputes_layer_norm(norm, linear, hidden_states):
        return LayerNormLinearFunction.apply(
            hidden_states, norm.weight, norm.bias, norm.eps, linear.weight, linear.bias
        )
    return linear(norm(hidden_states))


class TransformerMLP(nn.Module):
    """The two-layer MLP of a Transformer block (Swin, Pale): ``Linear(C -> mlp_ratio C)``, activation, dropout,
    ``Linear(-> C)``, dropout; reads ``mlp_ratio``, ``hidden_act`` and ``hidden_dropout_prob`` from the config.

    In training with the exact GELU, no dropout between the layers and a plain ``nn.Linear`` second layer (every
    released config), the GELU and second layer run as :class:`GeluLinearFunction`: the same values and gradients,
    one ``mlp_ratio * C`` map less kept for the backward pass; given the block's LayerNorm, it runs with ``fc1`` as
    :func:`layer_norm_linear` (one ``C`` map less)."""

    def __init__(self, config, dim: int):
        super().__init__()
        hidden = int(dim * config.mlp_ratio)
        self.fc1 = OneDNNLinear(dim, hidden)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = OneDNNLinear(hidden, dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.exact_gelu = config.hidden_act == "gelu"

    def recomputes_gelu(self) -> bool:
        """Whether this forward runs the GELU and ``fc2`` as :class:`GeluLinearFunction`."""
        return (
            self.exact_gelu
            and self.training
            and torch.is_grad_enabled()
            and self.dropout.p == 0.0
            and type(self.fc2) in PLAIN_LINEAR_TYPES  # not a quantised or adapted layer with its own forward
            and not calls_hooks(*self.fused_modules())
        )

    def activates_in_place(self, hidden_states: torch.Tensor) -> bool:
        """Whether the exact GELU overwrites ``fc1``'s output ``hidden_states`` (inference: a fresh map nothing else
        holds; a second ``mlp_ratio * C`` map is a fresh allocation, and its page faults, per block: 12.6 MB in bf16
        in Swin-T's first stage at 512), computed without calling the activation module (not where it has hooks)."""
        if not self.exact_gelu or (torch.is_grad_enabled() and hidden_states.requires_grad):
            return False
        return not (isinstance(self.activation, nn.Module) and calls_hooks(self.activation))

    def fused_modules(self) -> list[nn.Module]:
        """The layers :class:`GeluLinearFunction` computes without calling them: the activation (where it is a
        module), the dropout (both of its calls) and ``fc2``."""
        modules = [self.dropout, self.fc2]
        return [self.activation, *modules] if isinstance(self.activation, nn.Module) else modules

    def forward(self, hidden_states: torch.Tensor, norm: nn.LayerNorm | None = None) -> torch.Tensor:
        """``norm``: the block's LayerNorm before the MLP, applied here (:func:`layer_norm_linear` with ``fc1``)."""
        if norm is None:
            hidden_states = self.fc1(hidden_states)
        else:
            hidden_states = layer_norm_linear(norm, self.fc1, hidden_states)
        if self.recomputes_gelu():
            return GeluLinearFunction.apply(hidden_states, self.fc2.weight, self.fc2.bias)
        activation = torch.ops.aten.gelu_ if self.activates_in_place(hidden_states) else self.activation
        hidden_states = self.dropout(activation(hidden_states))
        return self.dropout(self.fc2(hidden_states))


def attention_function(config, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> Callable:
    """The attention function of ``config._attn_implementation`` (transformers' ``ALL_ATTENTION_FUNCTIONS``; Swin's
    eager function for ``"eager"`` and for a module built outside a model, where it is unset), with one substitute:
    SDPA at CPU inference in bfloat16 runs as :func:`cpu_bfloat16_attention` on CPUs without AMX."""
    implementation = config._attn_implementation
    if implementation in (None, "eager"):
        return exported_eager_attention if torch.compiler.is_exporting() else eager_attention_forward
    if implementation == "sdpa" and runs_cpu_bfloat16_attention(query, key, value):
        return cpu_bfloat16_attention
    return ALL_ATTENTION_FUNCTIONS[implementation]


def exported_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Swin's eager attention (:func:`eager_attention_forward`, what an export traces) with the heads folded into the
    batch by copies (:func:`reshape_copy`) and its two products as ``torch.bmm``. torch's ``matmul`` (and
    ``flatten``) fold the batch dimensions of the transposed operands with a view or a copy as their strides allow,
    and the strides depend on whether a window has one token: a torch.export program keeps that choice as a guard,
    so a program of VWFormer traced where each cell of its 8 x 8 window grid holds several tokens refused inputs of
    at most 64 px, where a cell is one token. The same values; used while exporting only (:func:`attention_function`).
    Returns ``(B, tokens, heads, head_dim)``, contiguous, and the weights ``(B, heads, tokens, keys)``."""
    batch_size, num_heads, num_tokens, head_dim = query.shape
    num_keys = key.shape[2]
    scaling = head_dim**-0.5 if scaling is None else scaling
    # (B, heads, tokens, d) @ (B, heads, d, keys) as (B*heads, tokens, d) @ (B*heads, d, keys)
    query = reshape_copy(query, batch_size * num_heads, num_tokens, head_dim)
    key = reshape_copy(key, batch_size * num_heads, num_keys, head_dim)
    scores = torch.bmm(query, key.transpose(1, 2)) * scaling
    scores = scores.view(batch_size, num_heads, num_tokens, num_keys)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    value = reshape_copy(value, batch_size * num_heads, num_keys, head_dim)
    attended = torch.bmm(weights.view(batch_size * num_heads, num_tokens, num_keys), value)  # (B*heads, tokens, d)
    # (B*heads, tokens, d) -> (B, heads, tokens, d) -> (B, tokens, heads, d)
    attended = reshape_copy(
        attended.view(batch_size, num_heads, num_tokens, head_dim).transpose(1, 2),
        batch_size,
        num_tokens,
        num_heads,
        head_dim,
    )
    return attended, weights


def runs_cpu_bfloat16_attention(*tensors: torch.Tensor) -> bool:
    """Whether :func:`cpu_bfloat16_attention` stands in for SDPA on ``tensors``: bfloat16 on the CPU (an autocast
    forward's projections), inference (no operand needs a gradient: it keeps no graph of its own), not traced
    (compiled and exported graphs keep SDPA), and a CPU without AMX (:func:`cpu_has_amx_tiles`)."""
    if needs_gradient(*tensors):
        return False
    return onednn_runs(*tensors, dtypes=(torch.bfloat16,)) and not cpu_has_amx_tiles()


@functools.cache
def cpu_has_amx_tiles() -> bool:
    """Whether this CPU has Intel's AMX tile units (Xeon from Sapphire Rapids on), as torch's CPU feature check reads
    it (False where this torch has no such check). There torch's own CPU SDPA kernel is the faster bfloat16
    attention, and :func:`cpu_bfloat16_attention` does not stand in for it.

    Measured on 2 threads, bfloat16 autocast (benchmarks/README.md, "On an Intel Xeon with AMX"): on an
    Intel Xeon with AMX, SDPA took Pale-T's first-stage groups ``(38, 1, 896, 32)`` in 8.1 against 13.9 ms, and the
    whole forwards at 512 x 512 ran 0.84 (Pale-T optimised), 0.81 (SeMask-T's backbone, optimised) and 0.90 (the
    VWFormer head at 640) of their times with the stand-in; on the AMD EPYC (no AMX) the stand-in was written on,
    SDPA took 15.6 against 7.9 ms on Pale-T's groups. Read once per process: the CPU does not change."""
    is_supported = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(is_supported is not None and is_supported())


#: the most attention scores :func:`cpu_bfloat16_attention` computes at once (8 MiB in bfloat16): each chunk's
#: scores are still in the CPU's caches when the softmax and the second product read them. Pale-T at 512 x 512 in
#: bfloat16 on 2 threads: 232 against 254 ms per forward, the same values (its stage-1 calls hold 11-45M scores)
SCORES_PER_CHUNK = 4 * 1024 * 1024


def cpu_bfloat16_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Scaled dot-product attention as two batched bfloat16 matrix products around an in-place softmax, with the
    signature of transformers' attention functions: ``(B, heads, L, d)`` queries, ``(B, heads, S, d)`` keys and
    values, an additive mask broadcastable to ``(B, heads, L, S)``; returns ``(B, L, heads, d)`` and no weights.

    Why: on a CPU without AMX torch's CPU SDPA kernel takes as long in bfloat16 as in float32 (its softmax and block
    bookkeeping dominate at head size 32-64), while bfloat16 matrix products run at several times the float32 rate.
    Measured on 2 threads of an AMD EPYC: Pale-T's first-stage groups ``(19, 1, 896, 32)`` 7.9 against 15.6 ms,
    VW-MaskFormer's windows ``(64, 8, 100, 64)`` 8.9 against 16.5 ms. With AMX, SDPA is the faster one (4.0 against
    6.6 ms on those groups; the windows are the exception, 5.6 against 4.4 ms, but every model's forward ran faster
    with SDPA): there this function does not stand in (:func:`runs_cpu_bfloat16_attention`). The scores are
    bfloat16, as those of transformers' eager attention under autocast (the softmax itself computes in float32 and
    overwrites its input: no second score map). Large calls run in chunks of
    at most :data:`SCORES_PER_CHUNK` scores, over the batch and heads and, where one head's scores exceed it, over the
    queries: every score row is the same product and softmax, so the values are the same."""
    batch_size, num_heads, length, head_dim = query.shape
    scaling = head_dim**-0.5 if scaling is None else scaling
    # (B, heads, L, d) -> (B * heads, L, d), scaled in the one pass that also makes them contiguous (the heads are
    # usually a transposed view); keys transposed to (B * heads, d, S)
    queries = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    queries = torch.mul(query, scaling, out=queries).view(batch_size * num_heads, length, head_dim)
    keys = key.reshape(batch_size * num_heads, -1, head_dim).transpose(1, 2)
    values = value.reshape(batch_size * num_heads, -1, value.shape[-1])
    mask = None
    if attention_mask is not None:
        # the mask's rows broadcast over the queries: (B, heads or 1, 1 or L, S) -> (B * heads, 1 or L, S)
        mask = attention_mask.to(queries.dtype).expand(batch_size, num_heads, -1, -1)
        mask = mask.reshape(batch_size * num_heads, -1, mask.shape[-1])
    attended = queries.new_empty(batch_size * num_heads, length, values.shape[-1])
    key_length = keys.shape[-1]
    # chunks of whole (batch, head) pairs, or of one pair's query rows where a pair's scores exceed the budget
    scores_per_pair = max(1, length * key_length)
    pairs = max(1, SCORES_PER_CHUNK // scores_per_pair)
    fits = pairs > 1 or scores_per_pair <= SCORES_PER_CHUNK  # at least one whole pair per chunk
    rows = max(1, length) if fits else max(1, SCORES_PER_CHUNK // key_length)
    # one scores buffer for all the chunks: each fresh 8 MiB map would be memory the product first faults in page by
    # page (Pale-T at 512 x 512 in bfloat16 on 2 threads: 231 against 245 ms per forward, the same values)
    buffer = queries.new_empty(min(pairs, batch_size * num_heads) * min(rows, length) * key_length)
    for first in range(0, batch_size * num_heads, pairs):
        last = min(first + pairs, batch_size * num_heads)
        for top in range(0, length, rows):
            bottom = min(top + rows, length)
            chunk_queries = queries[first:last, top:bottom]
            # (pairs, rows, S) at the start of the buffer
            scores = buffer[: (last - first) * (bottom - top) * key_length].view(last - first, bottom - top, key_length)
            if mask is None:
                torch.bmm(chunk_queries, keys[first:last], out=scores)
            else:
                chunk_mask = mask[first:last] if mask.shape[1] == 1 else mask[first:last, top:bottom]
                torch.baddbmm(chunk_mask, chunk_queries, keys[first:last], out=scores)
            probabilities = torch.softmax(scores, dim=-1, out=scores)
            if dropout > 0.0:
                probabilities = F.dropout(probabilities, p=dropout, training=True)
            torch.bmm(probabilities, values[first:last], out=attended[first:last, top:bottom])
    # (B * heads, L, d) -> (B, L, heads, d)
    return attended.view(batch_size, num_heads, length, values.shape[-1]).transpose(1, 2), None


def folds_attention_projections(*layers: nn.Module) -> bool:
    """Whether a single-head attention with these dense layers may run with :func:`folded_query_projection` and
    :func:`folded_output_projection`: inference (no graph: in training every weight keeps the gradient the original
    gives it, and no parameter goes unused under DDP) and plain dense layers (not quantised or adapted ones with
    forwards of their own) without hooks (:func:`calls_hooks`: folded, a layer is never called)."""
    if torch.is_grad_enabled() or not all(type(layer) in PLAIN_LINEAR_TYPES for layer in layers):
        return False
    return not calls_hooks(*layers)


def folded_query_projection(query_proj: nn.Linear, key_proj: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of the queries that attend to the context tokens themselves in a single-head attention.

    With ``q = Wq x + bq``, ``k_j = Wk c_j + bk``: ``q . k_j = (Wk^T q) . c_j + q . bk``, and the last term, the same
    for every key, cancels in the softmax; so queries ``(Wk^T Wq) x + Wk^T bq`` attend to the context tokens (any
    scaling applies as before). One weight product, in the weights' dtype also under autocast."""
    with torch.autocast(device_type=query_proj.weight.device.type, enabled=False):
        weight = key_proj.weight.t() @ query_proj.weight  # (C_in, C_in): Wk^T Wq
        bias = None if query_proj.bias is None else key_proj.weight.t() @ query_proj.bias
    return weight, bias


def folded_output_projection(value_proj: nn.Linear, output_proj: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of the one dense layer after a single-head attention over the context tokens themselves.

    The probabilities ``P`` sum to 1 over the keys, so ``Wo P (Wv c + bv) + bo = (Wo Wv) (P c) + Wo bv + bo``. One
    weight product, in the weights' dtype also under autocast."""
    with torch.autocast(device_type=value_proj.weight.device.type, enabled=False):
        weight = output_proj.weight @ value_proj.weight  # (C_out, C_in): Wo Wv
        bias = None if value_proj.bias is None else output_proj.weight @ value_proj.bias
        if output_proj.bias is not None:
            bias = output_proj.bias if bias is None else bias + output_proj.bias
    return weight, bias


def folds_into_previous_layer(norm: nn.Module) -> bool:
    """Whether a BatchNorm is a fixed per-channel affine map to fold into the layer before it: a plain
    ``nn.BatchNorm2d`` in eval mode with running statistics, without hooks (:func:`calls_hooks`: folded, it is never
    called), not under autocast (there the folded kernel, a new tensor each call, is cast and reordered for oneDNN on
    every call: the VWFormer head ran 1.7x slower in bf16 on the CPU, where folding saved 4% in fp32)."""
    return (
        type(norm) is nn.BatchNorm2d
        and not norm.training
        and norm.running_mean is not None
        and not torch.is_autocast_enabled(norm.running_mean.device.type)
        and not calls_hooks(norm)
    )


def batch_norm_scale_and_shift(
    norm: nn.BatchNorm2d, preceding_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm(x + preceding_bias) = scale * x + shift`` per channel, from the running statistics: ``(C,)`` each (the
    bias of the layer the norm folds into, if any, is taken into the shift)."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    mean = norm.running_mean if preceding_bias is None else norm.running_mean - preceding_bias
    shift = -mean * scale
    return scale, shift if norm.bias is None else shift + norm.bias


def convolve_and_normalize(conv: nn.Module, norm: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """``norm(conv(hidden_states))`` (mmcv's ConvModule before its activation). At inference, with a plain
    ``nn.Conv2d`` without hooks and a BatchNorm that :func:`folds_into_previous_layer`, one convolution whose kernel is
    scaled per output channel and whose bias is the norm's shift: no pass over the map for the norm (the same values
    up to float rounding). Quantised, adapted or hooked convolutions, and training, run the two layers."""
    if type(conv) is nn.Conv2d and folds_into_previous_layer(norm) and not calls_hooks(conv):
        scale, shift = batch_norm_scale_and_shift(norm, conv.bias)
        # (C_out,) -> (C_out, 1, 1, 1): each output channel's kernel scaled
        return conv._conv_forward(hidden_states, conv.weight * scale[:, None, None, None], shift)
    return norm(conv(hidden_states))


def resolve_output_flags(config, kwargs: dict, attentions_need_eager: bool = True) -> tuple[bool, bool]:
    """A forward's ``output_hidden_states`` / ``output_attentions`` (transformers' ``TransformersKwargs``), the
    config's values where a call does not give them. Attention probabilities of the attention-interface layers exist
    only with eager attention (SDPA never materialises them): asking for them from a model that uses another
    implementation logs a warning (once), and the forward runs its attention eagerly for that call
    (:func:`eager_attention`), as transformers' models fall back. ``attentions_need_eager=False`` for a model whose
    returned attentions come from layers with a single implementation, or that returns none."""
    output_hidden_states = kwargs.get("output_hidden_states")
    output_attentions = kwargs.get("output_attentions")
    if output_hidden_states is None:
        output_hidden_states = config.output_hidden_states
    if output_attentions is None:
        output_attentions = config.output_attentions
    if output_attentions and attentions_need_eager and config._attn_implementation != "eager":
        logger.warning_once(
            f"output_attentions=True needs eager attention (the model uses {config._attn_implementation!r}): the "
            "calls that return attentions run eager attention; load the model with attn_implementation='eager' to "
            "avoid the switch"
        )
    return bool(output_hidden_states), bool(output_attentions)


def select_hidden_states(hidden_states: tuple, request) -> tuple:
    """``hidden_states`` as a call asked for them: all for ``output_hidden_states=True``, and for a list of indices
    (transformers' ``output_hidden_states=[0, 2, -1]``; negative ones count from the end) the chosen ones in place and
    None elsewhere."""
    if not isinstance(request, (list, tuple)):
        return hidden_states
    count = len(hidden_states)
    for index in request:
        if isinstance(index, bool) or not isinstance(index, int) or not -count <= index < count:
            raise ValueError(f"output_hidden_states index {index!r} is not one of the {count} hidden states")
    kept = {index % count for index in request}
    return tuple(state if position in kept else None for position, state in enumerate(hidden_states))


def eager_attention(config, enabled: bool) -> AbstractContextManager[None]:
    """Inside, the attention layers that read ``config`` run eager attention when ``enabled`` (a call that returns
    attention probabilities, see :func:`resolve_output_flags`); the config's implementation is restored after."""
    if not enabled or config._attn_implementation_internal == "eager":
        # a nullcontext, not a generator: torch.compile resumes after a graph break inside it (transformers' MaskFormer
        # decoder has one in training), where a generator-based context makes it skip the whole enclosing frame
        return nullcontext()
    return _eager_attention(config)


@contextmanager
def _eager_attention(config) -> Iterator[None]:
    previous = config._attn_implementation_internal
    config._attn_implementation_internal = "eager"  # this config only, not its sub-configs
    try:
        yield
    finally:
        config._attn_implementation_internal = previous


#: the tables of model class names by which transformers' task pipelines know a model: ``image-segmentation``
#: (with its other segmentation tables) and ``image-classification``
PIPELINE_TABLES = {
    "semantic-segmentation": MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
    "image-classification": MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
}


def list_for_pipeline(task: str, model_class: type) -> None:
    """Lists ``model_class`` under its config's model type in transformers' table for ``task``
    (:data:`PIPELINE_TABLES`). A task pipeline checks the model's class name against that table and logs "The model
    ... is not supported" at ERROR level for any other (it does not see classes registered with the auto classes,
    nor those of a folder loaded with ``trust_remote_code=True``). Called where a family's modeling module is
    imported, by hf_semseg or by transformers from a saved folder; the auto classes only read entries of model types
    transformers itself defines, so the entry changes nothing else."""
    PIPELINE_TABLES[task].setdefault(model_class.config_class.model_type, model_class.__name__)


def _check_label_map_shape(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` as ``(B, H, W)`` (a singleton channel axis dropped); any other shape, an empty map or a
    non-integer dtype is an error naming it."""
    if labels.ndim == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 3:
        raise ValueError(f"labels must have shape (batch, height, width); got {tuple(labels.shape)}")
    if labels.shape[1] == 0 or labels.shape[2] == 0:
        raise ValueError(f"labels has an empty label map of size {labels.shape[1]}x{labels.shape[2]}")
    if labels.is_floating_point() or labels.is_complex():
        # a cast to int64 would truncate them without a word (0.9 -> 0, label maps divided by 255 -> all 0)
        raise ValueError(f"labels has dtype {labels.dtype}; label maps hold class indices: an integer dtype")
    return labels


def check_pixel_values(
    pixel_values,
    num_channels: int,
    labels=None,
    *,
    num_channels_name: str = "config.num_channels",
    label_maps: bool = True,
    model: nn.Module | None = None,
    batch_norm_stride: int | None = None,
) -> None:
    """Checks a forward's inputs before any module runs, raising a ``ValueError`` that names the wrong value.

    ``pixel_values`` must be a floating-point ``(batch_size, num_channels, height, width)`` tensor with at least one
    image of at least 1x1 pixel, ``num_channels`` read from ``num_channels_name`` (the model's config, or its
    backbone's). ``labels``, when given, must hold one entry per image: label maps ``(B, H, W)`` or ``(B, 1, H, W)``
    (any non-empty size: the losses resize the logits to the labels) with ``label_maps``, otherwise one class id or
    target row per image (image classification), label maps of an integer dtype.

    With ``model``, ``pixel_values`` must have its weights' dtype outside autocast (:func:`check_pixel_values_dtype`).
    With ``model`` and ``batch_norm_stride``, a batch of one image in training mode is refused where a plain
    ``BatchNorm2d`` of the model would normalise a single value per channel, for which batch statistics do not
    exist (torch refuses them): ``batch_norm_stride`` is the stride of the smallest map a BatchNorm normalises, 0
    for a globally pooled map (UperNet's pyramid pooling, VWFormer's image pooling), which a single image never
    passes; see :func:`check_batch_norm_batch`."""
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"pixel_values must be a torch.Tensor; got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4:
        hint = " (a single image needs a batch axis: pixel_values[None])" if pixel_values.ndim == 3 else ""
        raise ValueError(
            f"pixel_values has shape {tuple(pixel_values.shape)}; this model takes (batch_size, num_channels, "
            f"height, width){hint}"
        )
    batch_size, channels, height, width = pixel_values.shape
    if batch_size == 0:
        raise ValueError("pixel_values has batch size 0: pass at least one image")
    if channels != num_channels:
        raise ValueError(f"pixel_values has {channels} channels; this model takes {num_channels} ({num_channels_name})")
    if height == 0 or width == 0:
        raise ValueError(f"pixel_values has images of size {height}x{width}: each side needs at least 1 pixel")
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values has dtype {pixel_values.dtype}; this model takes floating-point pixel values (normalised "
            "images, as its image processor makes them)"
        )
    if model is not None:
        check_pixel_values_dtype(pixel_values, model)
    if labels is not None:
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"labels must be a torch.Tensor; got {type(labels).__name__}")
        if label_maps:
            labels = _check_label_map_shape(labels)
        if labels.ndim > 0 and labels.shape[0] != batch_size:
            raise ValueError(f"labels has batch size {labels.shape[0]} but pixel_values has {batch_size}")
    if model is not None and batch_norm_stride is not None:
        if batch_norm_stride == 0:
            smallest_map = (1, 1)
        else:
            smallest_map = (-(-height // batch_norm_stride), -(-width // batch_norm_stride))
        check_batch_norm_batch(model, batch_size, smallest_map, batch_norm_stride, (height, width))


def check_pixel_values_dtype(pixel_values: torch.Tensor, model: nn.Module) -> None:
    """Refuses floating-point ``pixel_values`` of another dtype than ``model``'s weights (e.g. an image processor's
    float32 output for a model loaded in bfloat16), which the first convolution would refuse with torch's own
    message after other modules ran. Under ``torch.autocast`` on their device the operators cast float32 and half
    inputs and weights, so those mix there (autocast leaves float64 alone)."""
    weights_dtype = getattr(model, "dtype", None)
    if not isinstance(weights_dtype, torch.dtype) or pixel_values.dtype == weights_dtype:
        return
    if torch.is_autocast_enabled(pixel_values.device.type) and torch.float64 not in (pixel_values.dtype, weights_dtype):
        return
    raise ValueError(
        f"pixel_values has dtype {pixel_values.dtype} but {type(model).__name__}'s weights are {weights_dtype}: cast "
        "the input (pixel_values.to(model.dtype)), or run the model under torch.autocast (which casts float32 and "
        "half inputs, not float64)"
    )


def check_batch_norm_batch(
    model: nn.Module,
    batch_size: int,
    smallest_map: tuple[int, int],
    stride: int,
    input_size: tuple[int, int],
    minimum_side: int | None = None,
) -> None:
    """Refuses a batch of one image in training mode when the smallest map a BatchNorm of ``model`` normalises,
    ``smallest_map`` (at ``stride``; 0 for a globally pooled map), is a single pixel: the batch statistics of one
    value per channel do not exist (torch refuses them, and the running variance would divide by zero). Models whose
    BatchNorms are synchronised over processes (``SyncBatchNorm``, ``hf_semseg.training``'s cross-process one) or
    in eval mode are left alone. ``minimum_side``: the smallest single-image side that trains, when it is not
    ``stride + 1`` (a backbone that drops remainders)."""
    # the mode first: in eval mode (and so under torch.export) no size is compared, which would fix it in the graph
    if not model.training or batch_size != 1 or smallest_map[0] * smallest_map[1] != 1:
        return
    if not any(type(module) is nn.BatchNorm2d and module.training for module in model.modules()):
        return
    name = type(model).__name__
    if stride == 0:
        raise ValueError(
            f"{name} in training mode needs at least 2 images per batch (got 1): its decode head applies BatchNorm "
            "to a globally pooled map, whose batch statistics need 2 values per channel; train with a larger batch, "
            "or with BatchNorm synchronised over several processes"
        )
    minimum_side = stride + 1 if minimum_side is None else minimum_side
    raise ValueError(
        f"{name} in training mode cannot take a batch of 1 image of {input_size[0]}x{input_size[1]}: its stride-"
        f"{stride} map is 1x1, which leaves a BatchNorm a single value per channel; a single image must be at least "
        f"{minimum_side} px on one side (or train with 2 or more images per batch)"
    )


def check_segmentation_labels(labels: torch.Tensor, num_labels: int, ignore_index: int) -> torch.Tensor:
    """A semantic label batch as ``(B, H, W)`` int64 (a singleton channel axis is dropped). Values other than
    ``[0, num_labels)`` and the ignore index are an error naming them, raised before any loss is computed."""
    labels = _check_label_map_shape(labels).long()
    invalid = (labels != ignore_index) & ((labels < 0) | (labels >= num_labels))
    if torch.compiler.is_compiling():
        # torch.compile / torch.export cannot branch on tensor values while tracing: the check becomes an assertion
        # inside the graph (a RuntimeError with this message when it fails, without the offending values)
        torch._assert_async(
            ~invalid.any(), f"labels contain values outside [0, {num_labels - 1}] and the ignore index {ignore_index}"
        )
        return labels
    if invalid.any():
        bad = labels[invalid].unique()[:10].tolist()
        raise ValueError(
            f"labels contain values {bad} outside [0, {num_labels - 1}] and the ignore index {ignore_index}"
        )
    return labels


def reshape_copy(hidden_states: torch.Tensor, *shape: int) -> torch.Tensor:
    """``hidden_states.reshape(*shape)`` of a permuted or transposed view, always as a copy: the copy ``reshape`` makes
    anyway where the permuted dimensions are not of size 1, without its choice between a view and a copy. That choice
    reads the strides, which torch.export keeps as a guard on the sizes: a program traced where a map has several
    windows would refuse an input where it has one window on a side (found with Pale's pales and SeMask's windows)."""
    return hidden_states.clone(memory_format=torch.contiguous_format).view(shape)


def resize_to(hidden_states: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``, mmseg's ``resize``); the identity when the size already matches."""
    # traced (torch.compile / torch.export) it always interpolates (the identity at equal sizes): comparing symbolic
    # sizes would fix the outcome for the traced size in the graph
    if not torch.compiler.is_compiling() and tuple(hidden_states.shape[-2:]) == tuple(size):
        return hidden_states
    return F.interpolate(hidden_states, size=size, mode="bilinear", align_corners=False)


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 when it is of a narrower floating dtype (float16, bfloat16), else as it is."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _image_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    pixel_weights: torch.Tensor | None,
    resize: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
) -> torch.Tensor:
    """The summed (weighted) pixel cross-entropy of one chunk of images: ``logits`` ``(b, K, h, w)`` resized to the
    labels' ``(b, H, W)``. In float32 at least (:func:`at_least_float32`), as mmseg's ``force_fp32`` losses: a
    float16 model's sum over one image's pixels passed float16's 65504 (an infinite loss), a bfloat16 one's was
    rounded."""
    logits = at_least_float32(logits)
    losses = F.cross_entropy(resize(logits, labels.shape[-2:]), labels, ignore_index=ignore_index, reduction="none")
    if pixel_weights is not None:
        losses = losses * pixel_weights
    return losses.sum()


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """The per-pixel cross-entropy ``(B, H, W)`` of ``logits`` resized to the labels, in float32, without gradient,
    computed one image at a time (only one image's logits at label size exist at once); for OHEM's pixel selection."""
    with torch.no_grad():
        return torch.cat(
            [
                F.cross_entropy(
                    resize_to(at_least_float32(logits[i : i + 1]), labels.shape[-2:]),
                    labels[i : i + 1],
                    ignore_index=ignore_index,
                    reduction="none",
                )
                for i in range(len(labels))
            ]
        )


def pixel_label_probability(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """The softmax probability ``(B, H, W)`` of each pixel's label (class 0 where it is ``ignore_index``) from
    ``logits`` resized to the labels, without gradient, one image at a time; for OHEM's threshold."""
    with torch.no_grad():
        probabilities = []
        for i in range(len(labels)):
            label = labels[i : i + 1].masked_fill(labels[i : i + 1] == ignore_index, 0).unsqueeze(1)
            resized = resize_to(at_least_float32(logits[i : i + 1]), labels.shape[-2:])
            probabilities.append(F.softmax(resized, dim=1).gather(1, label).squeeze(1))
        return torch.cat(probabilities)


def upsampled_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    mean_over_all_pixels: bool = False,
    pixel_weights: torch.Tensor | None = None,
    resize: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] = resize_to,
) -> torch.Tensor:
    """Pixel-wise cross-entropy of ``logits`` ``(B, K, h, w)`` resized to the labels' ``(B, H, W)`` size by
    ``resize(logits, size)`` (default: bilinear, ``align_corners=False``, :func:`resize_to`).

    Averaged over all pixels, ignored ones counting 0 in the sum and 1 in the count (mmseg 0.x, ``avg_non_ignore=
    False``: the original training of SeMask-FPN and VWFormer), or over the labelled pixels only (PyTorch's and
    transformers' convention; 0 rather than NaN when no pixel is labelled). ``pixel_weights`` (OHEM) scale each
    pixel's loss.

    Memory: the logits at label size (``B x K x H x W``, 1.3 GB for 8 ADE20K images of 512 x 512 in float32, and as
    much again for log-softmax's saved output) never exist for the whole batch. The loss is summed one image at a
    time; when it needs a gradient, each image's term is differentiated with respect to that image's logits right
    away, in the forward pass (:class:`LossWithGradient`), so its label-size tensors are freed before the next image
    and nothing is recomputed in the backward pass: the same loss and gradients (up to the order of the float sums),
    at the cost of the whole-batch computation. Traced by torch.compile, each term runs under activation
    checkpointing instead (the resized logits recomputed in the backward pass), which Dynamo traces."""
    differentiated = torch.is_grad_enabled() and logits.requires_grad
    terms, gradients = [], []
    for i in range(len(labels)):  # images, not windows or tokens: bounds the memory of the label-size tensors
        weights = pixel_weights[i : i + 1] if pixel_weights is not None else None
        arguments = (logits[i : i + 1], labels[i : i + 1], ignore_index, weights, resize)
        if not differentiated:
            terms.append(_image_cross_entropy(*arguments))
        elif torch.compiler.is_compiling():
            terms.append(torch.utils.checkpoint.checkpoint(_image_cross_entropy, *arguments, use_reentrant=False))
        else:
            image_logits = arguments[0].detach().requires_grad_()
            term = _image_cross_entropy(image_logits, *arguments[1:])
            (gradient,) = torch.autograd.grad(term, image_logits)
            terms.append(term.detach())
            gradients.append(gradient)
    total = torch.stack(terms).sum()
    if gradients:
        total = LossWithGradient.apply(logits, total, torch.cat(gradients))
    if mean_over_all_pixels:
        return total / labels.numel()
    return total / (labels != ignore_index).sum().clamp(min=1)


class LossWithGradient(torch.autograd.Function):
    """A loss whose gradient with respect to ``inputs`` was computed already: returns ``value``, and its backward
    pass scales ``gradient`` by the incoming gradient (:func:`upsampled_cross_entropy`)."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, value: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gradient)
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (gradient,) = ctx.saved_tensors
        return gradient * grad_output, None, None


def segmentation_loss(
    config,
    logits: torch.Tensor,
    labels: torch.Tensor,
    auxiliary_logits: torch.Tensor | None = None,
    mean_over_all_pixels: bool = False,
) -> torch.Tensor:
    """The decode head's upsampled cross-entropy + ``config.auxiliary_loss_weight`` x the auxiliary head's (when
    there is one), labels checked first (``config.loss_ignore_index`` ignored)."""
    ignore_index = config.loss_ignore_index
    labels = check_segmentation_labels(labels, config.num_labels, ignore_index)
    loss = upsampled_cross_entropy(logits, labels, ignore_index, mean_over_all_pixels)
    if auxiliary_logits is not None:
        auxiliary_loss = upsampled_cross_entropy(auxiliary_logits, labels, ignore_index, mean_over_all_pixels)
        loss = loss + config.auxiliary_loss_weight * auxiliary_loss
    return loss


def decode_with_auxiliary_head(
    model, features: tuple[torch.Tensor, ...], labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``model.decode_head`` and, when the model has one, ``model.auxiliary_head`` on the feature maps (through
    ``model.neck`` first when the model has one), and with
    ``labels`` the family's ``model.compute_loss(logits, auxiliary_logits, labels)``. Returns
    ``(logits, auxiliary_logits, loss)``."""
    if getattr(model, "neck", None) is not None:  # the optional SDN-style neck
        features = model.neck(features)
    logits = model.decode_head(features)
    auxiliary_logits = model.auxiliary_head(features) if model.auxiliary_head is not None else None
    loss = None if labels is None else model.compute_loss(logits, auxiliary_logits, labels)
    return logits, auxiliary_logits, loss


def fcn_auxiliary_head(config, in_channels: list[int]) -> UperNetFCNHead | None:
    """transformers' UperNet FCN auxiliary head on the third feature map (stride 16) when
    ``config.use_auxiliary_head``: ``auxiliary_num_convs`` 3x3 ConvModules of ``auxiliary_channels``, a classifier."""
    if not config.use_auxiliary_head:
        return None
    head_config = SimpleNamespace(
        num_labels=config.num_labels,
        auxiliary_in_channels=None,
        auxiliary_channels=config.auxiliary_channels,
        auxiliary_num_convs=config.auxiliary_num_convs,
        auxiliary_concat_input=config.auxiliary_concat_input,
    )
    return UperNetFCNHead(head_config, in_channels=in_channels, in_index=2)


def init_norm_and_linear(module: nn.Module, initializer_range: float) -> None:
    """The initialisation every family uses for its plain layers: Linear truncated-normal(``initializer_range``)
    with zero bias, LayerNorm and BatchNorm weight 1 / bias 0 (BatchNorm running statistics reset)."""
    if isinstance(module, nn.Linear):
        init.trunc_normal_(module.weight, std=initializer_range)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        init.ones_(module.weight)
        init.zeros_(module.bias)
        if isinstance(module, nn.BatchNorm2d):
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


def init_conv_kaiming(conv: nn.Conv2d) -> None:
    """mmcv's ConvModule init: kaiming-normal (fan-out, ReLU) weight, zero bias."""
    init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        init.zeros_(conv.bias)


__all__ = [
    "SegmentationModelDefaults",
    "TransformerMLP",
    "check_backbone_stages",
    "check_batch_norm_batch",
    "check_pixel_values",
    "check_segmentation_labels",
    "decode_with_auxiliary_head",
    "init_conv_kaiming",
    "init_norm_and_linear",
    "resize_to",
    "fcn_auxiliary_head",
    "resolve_output_flags",
    "eager_attention",
    "select_hidden_states",
    "segmentation_loss",
    "pixel_cross_entropy",
    "upsampled_cross_entropy",
]
