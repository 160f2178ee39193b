"""The dense layer every family's token MLPs, projections and heads use: ``nn.Linear``, run on the CPU through oneDNN.

Why: PyTorch runs a float32 ``nn.Linear`` on the CPU as a BLAS ``sgemm`` (MKL in the official wheels), and MKL picks
its AVX2 kernels on AMD processors: on a 2-core AMD EPYC (Zen 5, AVX-512) we benchmarked on, a 2048^2 matmul reaches
about 190 GFLOP/s, while oneDNN's products of the same operands reach 350-450 GFLOP/s (AVX-512). Two oneDNN routes:

* **Inference** (no operand needs a gradient): oneDNN's matmul primitive, ``mkldnn::_linear_pointwise`` (the op
  inductor lowers a CPU linear layer to), in float32, or in bfloat16 under CPU autocast to bfloat16 (the operands
  cast as autocast casts them) or with bfloat16 operands. The bias is added inside the primitive; ``F.linear``'s
  ``addmm`` first copies the broadcast bias into the output. Swin-T's projections at 512x512 ran 2-3.7x faster than
  ``F.linear`` in float32 and 1.0-1.4x in bfloat16 (autocast's ``F.linear``, which runs oneDNN's bfloat16 matmul as
  ``addmm``). The weight is cast here, not by autocast, so autocast's cache of cast weights (kept until its
  outermost region ends) does not hold it: inside one long autocast region ``F.linear`` casts a weight once, this
  path in every call. Models optimised for inference (:class:`PackedInferenceLinear`) cast and pack it once.
* **Training** (the primitive has no autograd formula): in float32, a 1x1 convolution of the tokens laid out
  channels-last; autograd differentiates it with oneDNN's convolution backward. The projections of Swin-T's blocks
  ran 1.4-2x faster in a training step. Under autocast, ``F.linear``.

The values are the same product with another summation order (relative differences of 1e-7 to 1e-6 in float32, like
any change of BLAS kernel); no layout changes hands: the ``(..., C)`` tokens go in as they are (the convolution views
them as a ``(1, C, T, 1)`` channels-last map) and the output comes back as ``(..., C_out)``.

On a CPU without AVX-512 (torch's CPU capability AVX2) both libraries run AVX2 kernels and MKL's float32 product is
the faster for a weight as loaded: there float32 inference and training run ``F.linear``
(:func:`float32_product_on_onednn`; packed weights and bfloat16 are unchanged).

It runs only where oneDNN computes at the precision asked for: the CPU, float32 operands with the float32 precision
of matmuls and of oneDNN's matmuls / convolutions left at full precision (a user who allows bfloat16 or TF32 inside
float32 matmuls gets ``F.linear`` as asked), bfloat16 only where oneDNN has bfloat16 kernels for this CPU, and not
while traced by torch.compile / torch.export / the TorchScript tracer (a traced ``F.linear`` is what inductor fuses
and ONNX exports as a ``MatMul``). Elsewhere it is ``F.linear``.

Portable module: imports torch only.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook


def traced() -> bool:
    """Whether the forward is being traced (torch.compile / torch.export / the TorchScript tracer): a graph is being
    recorded, so an eager-only kernel choice must not be made."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def needs_gradient(*tensors: torch.Tensor) -> bool:
    """Whether autograd will differentiate through an operation on ``tensors``: grad mode is on and one of them
    requires a gradient."""
    return torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)


def onednn_runs(*tensors: torch.Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> bool:
    """Whether oneDNN may compute on ``tensors``: all on the CPU and of one of ``dtypes``, oneDNN available and
    enabled, not traced (torch.compile / torch.export / the TorchScript tracer)."""
    if traced():
        return False
    if not all(tensor.device.type == "cpu" and tensor.dtype in dtypes for tensor in tensors):
        return False
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def full_float32_precision(*onednn_backends) -> bool:
    """Whether ``onednn_backends`` (``torch.backends.mkldnn.matmul`` / ``.conv``) compute float32 in full precision:
    no bfloat16 or TF32 inside float32 products allowed by the user, through the backend's own setting or, where it
    is ``"none"``, oneDNN's, then PyTorch's (``torch.set_float32_matmul_precision`` sets oneDNN's matmul one)."""
    for backend in onednn_backends:
        precision = backend.fp32_precision
        if precision == "none":  # "none": the oneDNN-wide setting applies, then the global one
            precision = torch.backends.mkldnn.fp32_precision
        if precision == "none":
            precision = torch.backends.fp32_precision
        if precision not in ("none", "ieee"):
            return False
    return True


def runs_on_onednn(*tensors: torch.Tensor) -> bool:
    """Whether a dense layer over ``tensors`` (its input or output gradient, weight, ...) runs as a oneDNN 1x1
    convolution (the training path): all on the CPU in float32, full-precision float32 matmuls and oneDNN
    convolutions, not traced, and a CPU where oneDNN's float32 products are the faster
    (:func:`float32_product_on_onednn`)."""
    mkldnn = torch.backends.mkldnn
    return onednn_runs(*tensors) and full_float32_precision(mkldnn.matmul, mkldnn.conv) and float32_product_on_onednn()


def inference_product_dtype(*operands: torch.Tensor) -> torch.dtype | None:
    """The dtype in which a dense layer over ``operands`` (input, weight[, bias]) runs as oneDNN's matmul primitive,
    or None where it does not: no operand needing a gradient (the primitive has no autograd formula); under CPU
    autocast to bfloat16 on float32 / bfloat16 operands, or on bfloat16 operands without autocast, bfloat16 where
    oneDNN has bfloat16 kernels for this CPU; float32 operands without autocast at full float32 precision."""
    if needs_gradient(*operands):
        return None
    if torch.is_autocast_enabled("cpu"):
        if torch.get_autocast_dtype("cpu") != torch.bfloat16:
            return None
        dtype, dtypes = torch.bfloat16, (torch.float32, torch.bfloat16)  # autocast casts float32 operands
    else:
        dtype = operands[0].dtype
        dtypes = (dtype,)
    if dtype == torch.bfloat16:
        supported = onednn_runs(*operands, dtypes=dtypes) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return dtype if supported else None
    if dtype == torch.float32 and onednn_runs(*operands):
        return dtype if full_float32_precision(torch.backends.mkldnn.matmul) else None
    return None


def tokens_as_channels_last_map(tokens: torch.Tensor) -> torch.Tensor:
    """``(..., C)`` -> ``(1, C, T, 1)`` with channels-last strides: T = the product of the leading sizes; a view of a
    contiguous input."""
    # (..., C) -> (1, T, 1, C) -> (1, C, T, 1)
    return tokens.reshape(1, -1, 1, tokens.shape[-1]).permute(0, 3, 1, 2)


def channels_last_map_as_tokens(channels_last: torch.Tensor, leading_shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`tokens_as_channels_last_map`: ``(1, C, T, 1)`` -> ``(*leading_shape, C)``."""
    # (1, C, T, 1) -> (1, T, 1, C) -> (..., C)
    return channels_last.permute(0, 2, 3, 1).reshape(*leading_shape, channels_last.shape[1])


def onednn_linear(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(hidden_states, weight, bias)`` through oneDNN (see the module docstring): at inference, where
    :func:`inference_product_dtype` gives a dtype, oneDNN's matmul primitive in that dtype; elsewhere
    :func:`training_linear`."""
    dtype = linear_product_dtype(hidden_states, weight, bias)
    if dtype is None:
        return training_linear(hidden_states, weight, bias)
    return onednn_inference_linear(hidden_states, weight, bias, dtype)


def linear_product_dtype(
    hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.dtype | None:
    """:func:`inference_product_dtype` of a dense layer's operands; None for an empty input."""
    if hidden_states.numel() == 0:
        return None
    return inference_product_dtype(*((hidden_states, weight) if bias is None else (hidden_states, weight, bias)))


def onednn_inference_linear(
    hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype | None
) -> torch.Tensor:
    """oneDNN's matmul primitive on the operands cast to ``dtype`` (a no-op for those already in it): the inference
    path of :func:`onednn_linear`, for a caller that has already obtained ``dtype`` from
    :func:`inference_product_dtype` for operands like these (same device, dtypes and autocast state); where that
    gave None, ``F.linear`` (what :func:`onednn_linear` runs for operands that need no gradient), and in float32 also
    on CPUs where MKL's product is the faster (:func:`float32_product_on_onednn`)."""
    if dtype is None or (dtype == torch.float32 and not float32_product_on_onednn()):
        return F.linear(hidden_states, weight, bias)
    hidden_states, weight = hidden_states.to(dtype), weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    return torch.ops.mkldnn._linear_pointwise(hidden_states, weight, bias, "none", [], "")


def packs_inference_weights(dtype: torch.dtype | None) -> bool:
    """Whether oneDNN's packed-weight products (:class:`PackedInferenceLinear`, and the convolutions of models that
    prepare their weights for inference) may run in ``dtype``, a product dtype from :func:`inference_product_dtype`
    (None: they may not): the packing operators are in this build, and a float32 product is asked at full precision
    of oneDNN's convolutions as well as of its matmuls."""
    if dtype is None or not HAS_PACKED_WEIGHT_OPERATORS:
        return False
    return dtype == torch.bfloat16 or full_float32_precision(torch.backends.mkldnn.conv)


#: the oneDNN operators of products with weights packed once (the ones inductor uses for frozen CPU graphs)
PACKED_WEIGHT_OPERATORS = (
    "_reorder_linear_weight",
    "_linear_pointwise",
    "_reorder_convolution_weight",
    "_convolution_pointwise",
)
#: whether this torch build has them (looked up once: :func:`packs_inference_weights` runs in every forward)
HAS_PACKED_WEIGHT_OPERATORS = all(hasattr(torch.ops.mkldnn, name) for name in PACKED_WEIGHT_OPERATORS)


def weight_stamps(weights: tuple) -> tuple:
    """What tells whether a tensor of ``weights`` has changed since: its in-place version counter (optimiser steps,
    ``load_state_dict``, ``torch.nn.init``) and its memory (``.to()``, a replaced ``.data``); other entries (None,
    numbers) as they are."""
    return tuple((w._version, w.data_ptr()) if isinstance(w, torch.Tensor) else w for w in weights)


def unchanged_since(sources: tuple, made_from: tuple, stamps: tuple) -> bool:
    """Whether ``sources`` are what a preparation was ``made_from``: the very tensors, with the :func:`weight_stamps`
    they had then (``stamps``), and the other entries equal. One pass, stopping at the first change: it runs in every
    inference forward of an optimised layer."""
    if len(sources) != len(made_from):
        return False
    for now, then, stamp in zip(sources, made_from, stamps):
        if isinstance(then, torch.Tensor):
            if now is not then or now._version != stamp[0] or now.data_ptr() != stamp[1]:
                return False
        elif isinstance(now, torch.Tensor) or now != stamp:
            return False
    return True


class OptimizerSteps:
    """How many ``torch.optim`` optimiser steps this process has taken since :class:`InferenceWeights` were first made
    (a global post-step hook, registered then): fused optimisers (``fused=True``; transformers' Trainer defaults to
    ``adamw_torch_fused``) write the parameters in place without bumping their version counters, so
    :func:`weight_stamps` cannot see their steps. Any step in the process makes every preparation stale."""

    count = 0
    hooked = False

    @classmethod
    def watch(cls) -> None:
        if not cls.hooked:
            register_optimizer_step_post_hook(cls.step_taken)
            cls.hooked = True

    @classmethod
    def step_taken(cls, optimizer, args, kwargs) -> None:
        cls.count += 1


class InferenceWeights:
    """A module's weights prepared once for inference (``optimize_for_inference``), per product dtype, with a
    record of what each preparation was made from, to tell when it is stale: the very tensors (not replaced) and
    their :func:`weight_stamps` (not changed in place, not moved), and no optimiser step taken since
    (:class:`OptimizerSteps`). ``settings``: the options of the preparation. Copies (``copy.deepcopy``, pickling)
    keep the settings, not the prepared tensors (oneDNN's packed tensors have no storage to copy): they are made
    again on the copy's first inference forward; so is every preparation after its module was converted or moved
    (:class:`HoldsInferenceWeights`)."""

    def __init__(self, **settings):
        self.settings = settings
        self.by_dtype: dict = {}
        OptimizerSteps.watch()

    def prepared(self, dtype: torch.dtype, sources: tuple, make):
        """The preparation for ``dtype`` made from ``sources`` (tensors and settings), by ``make()`` when there is
        none yet or ``sources`` changed since it was made."""
        entry = self.by_dtype.get(dtype)
        if entry is not None:
            made_from, stamps, steps, prepared = entry
            if steps == OptimizerSteps.count and unchanged_since(sources, made_from, stamps):
                return prepared
            del self.by_dtype[dtype]  # the stale tensors go before the new ones are made
        prepared = make()
        self.by_dtype[dtype] = (sources, weight_stamps(sources), OptimizerSteps.count, prepared)
        return prepared

    def drop_prepared(self) -> None:
        """Drops every preparation (the settings stay: they are made again on the next inference forward)."""
        self.by_dtype.clear()

    def __getstate__(self) -> dict:
        return {"settings": self.settings}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state["settings"])


class HoldsInferenceWeights:
    """Base (listed before ``nn.Module``'s classes) of the modules that hold :class:`InferenceWeights`: converting or
    moving the module (``.to()``, ``.half()``, ``.float()``, ``.cuda()``, ``to_empty()``: ``nn.Module._apply``, on it
    or on a module containing it) drops its preparations, made again in the new dtype / on the new device on the
    next inference forward. The converted weights may take the address the old ones freed, where :func:`weight_stamps`
    cannot tell them apart (a float32 -> bfloat16 -> float32 round trip served the copy of the unrounded weights), and
    a copy for a dtype the module no longer has was kept until :meth:`clear_inference_optimization`."""

    #: set by the models' ``optimize_for_inference`` (None: off); not a parameter or a buffer
    inference_weights: InferenceWeights | None = None

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        if self.inference_weights is not None:
            self.inference_weights.drop_prepared()
        return module


class PackedInferenceLinear:
    """A dense layer's weight and bias prepared once for inference in a product ``dtype``: cast to it and the weight
    reordered into oneDNN's own layout for its matmul primitive (``mkldnn::_reorder_linear_weight``, as inductor
    packs the weights of a frozen CPU graph). Calling it is :func:`onednn_inference_linear` without the per-call weight
    cast and reorder: the bfloat16 cast and reorder of Pale-T's 256 x 256 weights take about as long as their product
    with its 196 tokens at 224 x 224. The same product (in our measurements the same values, bit for bit, except for
    a single token in float32, where oneDNN picks another kernel); the packed copy is extra memory, the size of the
    weight in ``dtype``. In float32 on a CPU where MKL's product is the faster (:func:`float32_product_on_onednn`:
    AVX2 only) nothing is packed: the copy keeps the weight's layout and the product is ``F.linear``, followed by the
    GELU or the residual addition as separate in-place kernels (the same values in float32).

    ``exact_gelu``: the exact (erf) GELU applied to the product as oneDNN's post-op, before it is stored: in float32
    the values of ``gelu_`` on the product (bit for bit in our checks, not promised), in bfloat16 the GELU of the
    float32 accumulator, rounded once (one rounding fewer than a GELU on the stored bfloat16 product)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, exact_gelu: bool = False):
        self.dtype = dtype
        #: whether the product is oneDNN's matmul primitive on the packed weight (else F.linear on a plain copy)
        self.on_onednn = dtype != torch.float32 or float32_product_on_onednn()
        weight = weight.detach().to(dtype)
        # a copy either way: the prepared weight is what the layer held when it was prepared, on every CPU
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, None) if self.on_onednn else weight.clone()
        self.bias = None if bias is None else bias.detach().to(dtype)
        self.exact_gelu = exact_gelu
        # oneDNN's post-op and its algorithm: "none" is the erf GELU ("tanh" would be the approximation)
        self.activation, self.algorithm = ("gelu", "none") if exact_gelu else ("none", "")

    def __call__(self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``(..., C_in)`` -> ``(..., C_out)`` in ``dtype`` (the input cast to it, as autocast casts it).

        ``residual``: a ``(..., C_out)`` map in ``dtype`` added to the product in the kernel (oneDNN's binary
        post-op; the same values as ``residual + product`` in float32: one rounding either way), without a pass of
        its own (on a plain copy, an in-place addition to ``F.linear``'s fresh output); not with ``exact_gelu``. The
        result is a new map; ``residual`` is only read."""
        hidden_states = hidden_states.to(self.dtype)
        if residual is not None:
            check_residual_post_op(self, "product", residual)
        if not self.on_onednn:
            product = F.linear(hidden_states, self.weight, self.bias)
            if self.exact_gelu:
                return torch.ops.aten.gelu_(product)
            if residual is None:
                return product
            if residual.shape != product.shape:  # add_ would broadcast a smaller one where the post-op refuses it
                raise ValueError(
                    f"PackedInferenceLinear: a residual of shape {tuple(residual.shape)} added to a product of shape "
                    f"{tuple(product.shape)}; expected the product's shape"
                )
            return product.add_(residual)
        if residual is None:
            return torch.ops.mkldnn._linear_pointwise(
                hidden_states, self.weight, self.bias, self.activation, [], self.algorithm
            )
        return torch.ops.mkldnn._linear_pointwise.binary(hidden_states, residual, self.weight, self.bias, "add")


@functools.cache
def aten_runs_avx512() -> bool:
    """Whether ATen's CPU kernels run AVX-512 on this CPU (torch's CPU capability, which ``ATEN_CPU_CAPABILITY``
    can lower): the CPUs where oneDNN's float32 kernels were measured faster than ATen's and MKL's
    (:func:`gelu_post_op_pays`, :func:`float32_product_on_onednn`). Read once per process: the CPU does not change."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512"


def gelu_post_op_pays() -> bool:
    """Whether a prepared dense layer followed by the exact GELU runs it as oneDNN's post-op
    (:class:`PackedInferenceLinear`'s ``exact_gelu``) rather than as ATen's in-place GELU on the stored product: where
    ATen runs AVX-512 (:func:`aten_runs_avx512`), the CPUs the post-op was measured faster on.

    Measured on 2 threads: on an Intel Xeon with AVX-512 and AMX the post-op made Pale-T's optimised forward 0.94x as
    long at 512 x 512 in bfloat16; on an AMD EPYC with AVX2 only, oneDNN's GELU post-op is the slower one
    (``(196, 256) -> 1024`` tokens 1.17 against 1.00 ms with the separate GELU, ``(3136, 64) -> 256`` 1.53 against
    1.03 ms), and Pale-T's optimised forward in float32 ran 0.97x / 0.94x as long at 224 / 512 without it (medians of
    three A/B runs; benchmarks/README.md). The values are the same (bit for bit in our float32 checks)."""
    return aten_runs_avx512()


def float32_product_on_onednn() -> bool:
    """Whether a float32 dense layer with its weight as loaded runs on oneDNN rather than as ``F.linear`` (MKL's sgemm
    in the official wheels): at inference oneDNN's matmul primitive (:func:`onednn_inference_linear`; packed weights
    are another matter), in training the 1x1 convolution (:func:`runs_on_onednn`). Where ATen runs AVX-512
    (:func:`aten_runs_avx512`): there oneDNN's AVX-512 kernels outrun MKL, which takes its AVX2 kernels on AMD
    processors (the module docstring). On a CPU with AVX2 only both run AVX2 and MKL is the faster: on 2 threads of
    an AMD EPYC without AVX-512, with ``F.linear`` Pale-T as loaded ran 0.92x / 0.97x as long at 224 / 512 and
    SeMask-T's FPN 0.96x at 512, and training steps at batch 2, 256 x 256, took 0.63x (Pale-T) and 0.77x (SeMask-T
    FPN with its loss) as long (medians of three A/B runs in one process; benchmarks/README.md). The same products
    up to float32 rounding (another summation order)."""
    return aten_runs_avx512()


def check_residual_post_op(prepared, kind: str, residual: torch.Tensor) -> None:
    """Refuses a ``residual`` that oneDNN's binary add post-op of ``prepared`` (a :class:`PackedInferenceLinear` or
    :class:`PackedInferenceConvolution`, whose ``kind`` of result it is added to) cannot take: one of another dtype
    than the result's, or one on a result that already has an activation post-op."""
    if prepared.activation != "none" or residual.dtype != prepared.dtype:
        raise ValueError(
            f"{type(prepared).__name__}: a residual of dtype {residual.dtype} added to a {prepared.dtype} {kind} with "
            f"post-op {prepared.activation!r}; expected a {prepared.dtype} residual and no post-op"
        )


def fold_batch_norm(
    weight: torch.Tensor, bias: torch.Tensor | None, norm: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's ``weight`` and ``bias`` with the eval-mode BatchNorm after it folded in (as mmcv's
    ``fuse_conv_bn``): ``norm(conv(x)) = conv'(x)`` with ``w' = w s`` and ``b' = (b - mean) s + beta`` per output
    channel, ``s = gamma / sqrt(var + eps)``; computed in float64, returned in ``weight``'s dtype. ``norm`` keeps
    running statistics (without them eval mode normalises with the batch's, which no weight can hold)."""
    dtype = weight.dtype
    scale = norm.running_var.double().add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() if bias is None else bias.double() - norm.running_mean.double()
    shift = shift * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    # (C_out,) scales the (C_out, C_in / groups, k, k) weight per output channel
    return (weight.double() * scale[:, None, None, None]).to(dtype), shift.to(dtype)


class PackedInferenceConvolution:
    """A zero-padded convolution prepared once for inference in a product ``dtype``: weight and bias cast to it, and
    the weight reordered into oneDNN's layout for the input's shape (``mkldnn::_reorder_convolution_weight``), again
    when the shape changes (a layout chosen for one size can be several times slower on another: a float32 14 x 14
    one took 650 against 170 us on a 64 x 64 map). By default stride 1 and "same" padding (Pale's depth-wise ones);
    the conv embeddings give their own ``stride`` and ``padding``. ``activation``: oneDNN's post-op applied to the
    output before it is stored (``"relu"``: the same values as a ReLU after the convolution, without a pass over the
    map), or ``"none"``."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        groups: int,
        dtype: torch.dtype,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] | None = None,
        activation: str = "none",
    ):
        self.dtype = dtype
        self.weight = weight.detach().to(dtype)
        self.bias = None if bias is None else bias.detach().to(dtype)
        self.groups = groups
        self.stride = list(stride)
        self.padding = [weight.shape[-2] // 2, weight.shape[-1] // 2] if padding is None else list(padding)
        self.activation = activation
        self.input_shape: list[int] | None = None
        self.packed_weight: torch.Tensor | None = None

    def __call__(self, channels_first: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` in ``dtype`` -> ``(B, C_out, H', W')``, channels-last.

        ``residual``: a ``(B, C_out, H', W')`` map in ``dtype`` added to the convolution in the kernel (oneDNN's
        binary post-op; the same values as ``residual + convolution`` in float32), without a pass of its own; not
        with an ``activation``. The result is a new map; ``residual`` is only read."""
        shape = list(channels_first.shape)
        if shape != self.input_shape:
            self.packed_weight = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, [1, 1], self.groups, shape
            )
            self.input_shape = shape
        if residual is not None:
            check_residual_post_op(self, "convolution", residual)
            return torch.ops.mkldnn._convolution_pointwise.binary(
                channels_first, residual, self.packed_weight, self.bias, self.padding, self.stride, [1, 1],
                self.groups, "add", None, None, [], None,
            )  # fmt: skip
        return torch.ops.mkldnn._convolution_pointwise(
            channels_first,
            self.packed_weight,
            self.bias,
            self.padding,
            self.stride,
            [1, 1],
            self.groups,
            self.activation,
            [],
            "",
        )


def calls_hooks(*modules: nn.Module) -> bool:
    """Whether calling any of ``modules`` would run a hook of its own: a forward (pre-)hook, or, with grad mode on, a
    backward (pre-)hook (which a module sets up in its call; under ``no_grad`` it has nothing to set up). A fused or
    prepared path that computes these modules without calling them (a folded norm, folded projections, a
    convolution split over its inputs, a recomputing autograd function, a block's direct kernel calls) runs only
    where this is False: a hook put on a module (a feature extractor, transformers' output capturing, a pruning
    tool) sees every call of it, with the module's own input and output.

    Global hooks (``register_module_forward_hook``) do not count: torch's module trackers register them
    (``FlopCounterMode``, the memory tracker, ``ModuleTracker``) to observe every module, and an observer must not
    change the path it measures (the fusions change the MACs; the prepared paths the kernels and memory). They see
    the modules the model calls, as they do around PyTorch's own fast paths (``nn.TransformerEncoderLayer``)."""
    grad_enabled = torch.is_grad_enabled()
    for module in modules:
        if module._forward_hooks or module._forward_pre_hooks:
            return True
        if grad_enabled and (module._backward_hooks or module._backward_pre_hooks):
            return True
    return False


def packed_convolution_dtype(hidden_states: torch.Tensor, conv: nn.Module, *modules: nn.Module) -> torch.dtype | None:
    """The product dtype in which ``conv`` (and ``modules``, the layers computed with it: a folded norm, a fused
    activation) may run on ``hidden_states`` with weights prepared once (:class:`PackedInferenceConvolution`), or None
    where they run as modules: a plain ``nn.Conv2d`` (zero padding given as numbers, no dilation), no hooks on any of
    them (:func:`calls_hooks`), no gradient, not traced, a non-empty input and a packed oneDNN product
    (:func:`packs_inference_weights`)."""
    if traced() or hidden_states.numel() == 0 or type(conv) is not nn.Conv2d:
        return None
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or conv.dilation != (1, 1):
        return None
    if calls_hooks(conv, *modules):
        return None
    dtype = inference_product_dtype(hidden_states, conv.weight)
    return dtype if packs_inference_weights(dtype) else None


def training_linear(
    hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`onednn_linear`'s training path: where :func:`runs_on_onednn` (and not under autocast), a oneDNN 1x1
    convolution of the tokens, which autograd differentiates with oneDNN's backward kernels; elsewhere
    ``F.linear``. The memory-saving autograd functions run their forward's dense layer with it: grad mode is off
    inside them, but they are part of a training step and compute what the plain layers of that step compute, bit for
    bit."""
    operands = (hidden_states, weight) if bias is None else (hidden_states, weight, bias)
    if (
        hidden_states.numel() == 0
        or torch.is_autocast_enabled(hidden_states.device.type)
        or not runs_on_onednn(*operands)
    ):
        return F.linear(hidden_states, weight, bias)
    # (C_out, C_in) -> (C_out, C_in, 1, 1); the output (1, C_out, T, 1) is channels-last like the input
    output = F.conv2d(tokens_as_channels_last_map(hidden_states), weight[:, :, None, None], bias)
    return channels_last_map_as_tokens(output, hidden_states.shape[:-1])


def linear_backward(
    grad_output: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, has_bias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The gradients of ``F.linear(inputs, weight, bias)`` given that of its output: ``(grad_inputs, grad_weight,
    grad_bias)`` (``grad_bias`` None without a bias), in the dtype of ``grad_output`` (the callers cast). For the
    custom autograd functions that recompute the linear layer's input: where :func:`runs_on_onednn`, oneDNN's 1x1
    convolution backward; elsewhere two matmuls and a sum."""
    if grad_output.numel() and runs_on_onednn(grad_output, inputs, weight):
        out_features, in_features = weight.shape
        grad_map, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            tokens_as_channels_last_map(grad_output),
            tokens_as_channels_last_map(inputs),
            weight[:, :, None, None],
            [out_features] if has_bias else None,
            [1, 1],  # stride
            [0, 0],  # padding
            [1, 1],  # dilation
            False,  # transposed
            [0, 0],  # output padding
            1,  # groups
            [True, True, has_bias],
        )
        grad_inputs = channels_last_map_as_tokens(grad_map, inputs.shape[:-1])
        return grad_inputs, grad_weight.view(out_features, in_features), grad_bias if has_bias else None
    # (..., out) -> (tokens, out); (..., in) -> (tokens, in)
    grad_rows = grad_output.reshape(-1, grad_output.shape[-1])
    grad_weight = grad_rows.t().mm(inputs.reshape(-1, inputs.shape[-1]))
    grad_bias = grad_rows.sum(0) if has_bias else None
    return grad_output.matmul(weight), grad_weight, grad_bias


class OneDNNLinear(HoldsInferenceWeights, nn.Linear):
    """``nn.Linear`` (same parameters, state dict and init) whose forward is :func:`onednn_linear`; optimised for
    inference (:func:`optimize_linear_layers_for_inference`), its oneDNN products use the weight cast and packed
    once (:class:`PackedInferenceLinear`) instead of in every call."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if self.inference_weights is None:
            return onednn_linear(hidden_states, weight, bias)
        dtype = linear_product_dtype(hidden_states, weight, bias)
        if dtype is None:
            return training_linear(hidden_states, weight, bias)
        if not packs_inference_weights(dtype):
            return onednn_inference_linear(hidden_states, weight, bias, dtype)
        packed = self.inference_weights.prepared(
            dtype, (weight, bias), lambda: PackedInferenceLinear(weight, bias, dtype)
        )
        return packed(hidden_states)


def optimize_linear_layers_for_inference(module: nn.Module, enabled: bool = True) -> None:
    """Turns the packed inference weights of every :class:`OneDNNLinear` inside ``module`` on (made on the first
    inference forward per product dtype) or off (dropped). Exact type only: a subclass (quantised, any-precision)
    has a forward of its own."""
    for layer in module.modules():
        if type(layer) is OneDNNLinear:
            layer.inference_weights = InferenceWeights() if enabled else None


def set_inference_weights(module: nn.Module, module_types, enabled: bool = True, **settings) -> None:
    """Turns the prepared inference weights of every submodule of ``module`` that is a ``module_types`` on (an empty
    :class:`InferenceWeights` with ``settings``, filled on the first inference forward per product dtype) or off
    (dropped): the models' ``optimize_for_inference`` / ``clear_inference_optimization`` for their own modules."""
    for child in module.modules():
        if isinstance(child, module_types):
            child.inference_weights = InferenceWeights(**settings) if enabled else None


def replace_modules(module: nn.Module, module_type: type, make_replacement) -> None:
    """Replaces every submodule of ``module`` whose type is exactly ``module_type`` (not a subclass) with
    ``make_replacement(submodule)``, under the same name (before the weights are initialised or loaded)."""
    for name, child in list(module.named_modules()):
        if type(child) is module_type:
            parent_name, _, child_name = name.rpartition(".")
            setattr(module.get_submodule(parent_name), child_name, make_replacement(child))


def use_onednn_linear(module: nn.Module) -> None:
    """Replaces every plain ``nn.Linear`` inside ``module`` (a transformers module built with ``nn.Linear``) with a
    :class:`OneDNNLinear` of the same shape (before the weights are initialised or loaded; the parameter names are the
    same)."""
    replace_modules(
        module,
        nn.Linear,
        lambda child: OneDNNLinear(
            child.in_features,
            child.out_features,
            bias=child.bias is not None,
            device=child.weight.device,
            dtype=child.weight.dtype,
        ),
    )


#: the dense layers whose forward is the plain product (``nn.Linear``'s or :class:`OneDNNLinear`'s): the memory-saving
#: autograd functions may run them themselves; quantised or adapted subclasses, with forwards of their own, run as
#: they are
PLAIN_LINEAR_TYPES = (nn.Linear, OneDNNLinear)
