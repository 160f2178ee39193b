"""SDN-style neck (unofficial reconstruction; no official code exists).

Paper: Tan, Wu, Pi, "Semantic Diffusion Network for Semantic Segmentation", NeurIPS 2022, arXiv 2302.02057. The
authors released neither code nor weights, so nothing here can be checked against an original; the module is an
optional, randomly initialised neck for users who train it themselves. What each part rests on:

- **confirmed** (abstract and reviews): boundary enhancement framed as an anisotropic diffusion guided by semantics,
  solved by one learned forward pass ("SDN") made of a semantic difference convolution (SDC) and a feature fusion
  module, inserted as a neck between an unchanged encoder and decoder; no extra loss.
- **secondary** (an unofficial re-implementation and a reading note, which agree): the SDC formula

      Y_k(p0) = sum_c sum_{pn in 3x3} W[k, c, pn] * S(V_c(p0 + pn) - V_c(p0)) * (U_c(p0 + pn) - U_c(p0)),
      S(d) = 1 / sqrt(1 + d**2 / lambda**2),

  with U the features to enhance, V the semantic guidance and ``lambda_`` a fixed hyper-parameter; the fusion
  ``fuse(cat([U, ReLU(BN(Y))]))`` with a 1x1 convolution 2C -> C; for multi-scale decoders one SDN per pyramid level,
  level i guided by level i + 1 and the deepest level by a 3x3 stride-2 convolution of itself; bilinear upsampling
  where sizes differ.
- **reconstructed** (ours): whether the similarity is per channel or one value per neighbour (both offered,
  ``similarity="per_channel" | "l2"``); the 1x1 projection of the guidance to the level's channels; the treatment of
  the image border; the grouped / depthwise weights and every default marked "ours" below; the identity
  initialisation of ``fuse``.

Border (ours): a neighbour outside the image contributes nothing. Zero padding of U and V would let it contribute
``W * S(0 - V(p0)) * (0 - U(p0))``, a term that depends on the feature's magnitude at the border; replicate padding
removes it for the four edge neighbours but not for the diagonal ones (they would count an in-image neighbour a second
time, with another weight), so each tap is evaluated on the pixels whose neighbour lies inside the image only: for
every pixel exactly the in-image neighbours are summed.

Memory: the SDC runs tap by tap (8 taps; the centre tap's difference is always 0 and is skipped, so the centre weight
``W[..., 1, 1]`` never matters and gets no gradient). Each tap forms one shifted difference of U and of V, multiplies
them into a (B, C, H, W) term and accumulates the term through a grouped 1x1 convolution with that tap's weights; no
nine-fold copy (unfold) of U or V is ever made. In training the tap is recomputed in the backward pass
(``recompute=True``, torch's non-reentrant activation checkpointing), so autograd keeps only U, V and the weight
instead of four (B, C, H, W) tensors per tap.

Export (``torch.export``, ONNX): a traced graph cannot skip a tap for the sizes where no pixel has that neighbour
(a map 1 pixel high or wide, e.g. the deepest level of a 32x32 input), and the valid region of such a tap is empty,
which onnxruntime's convolution refuses. While exporting (``torch.compiler.is_exporting()``) every tap is therefore
evaluated on the whole map, its neighbours read from U and V zero-padded by one pixel, and masked to the pixels whose
neighbour is inside the image (:func:`_semantic_difference_convolution_for_export`): the same sum over the same
neighbours, with no empty tensor at any size. Eager runs (inference and training) keep the slicing above unchanged.

Portable remote code: imports torch and the standard library only.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


SIMILARITIES = ("per_channel", "l2")

# (kernel row, kernel column, dy, dx) of the 8 off-centre taps: tap (ky, kx) looks at the neighbour p0 + (ky - 1,
# kx - 1), the same convention as a 3x3 cross-correlation (F.conv2d) with padding 1
_TAPS = tuple((ky, kx, ky - 1, kx - 1) for ky in range(3) for kx in range(3) if (ky, kx) != (1, 1))


def _valid_slices(size: int, offset: int) -> tuple[slice, slice]:
    """Along one axis of length ``size``: the positions p0 whose neighbour p0 + ``offset`` is inside the image
    (``centre``) and those neighbours (``neighbour``), as slices of equal length (empty when ``size <= |offset|``)."""
    centre = slice(max(0, -offset), size - max(0, offset))
    neighbour = slice(max(0, offset), size - max(0, -offset))
    return centre, neighbour


def _tap_contribution(
    features: torch.Tensor,
    guidance: torch.Tensor,
    weight: torch.Tensor,
    ky: int,
    kx: int,
    inv_lambda_sq: float,
    per_channel: bool,
    groups: int,
) -> torch.Tensor:
    """The contribution of tap (ky, kx) to Y over the pixels whose neighbour lies inside the image: a
    (B, C_out, H - |dy|, W - |dx|) map, to be added at rows/columns ``_valid_slices(.., dy/dx)[0]`` of Y."""
    height, width = features.shape[-2:]
    rows, rows_n = _valid_slices(height, ky - 1)
    cols, cols_n = _valid_slices(width, kx - 1)
    # (B, C, H', W'): U(p0 + pn) - U(p0) and V(p0 + pn) - V(p0) over the valid region only (no padded copy)
    diff_u = features[:, :, rows_n, cols_n] - features[:, :, rows, cols]
    diff_v = guidance[:, :, rows_n, cols_n] - guidance[:, :, rows, cols]
    if per_channel:
        squared = diff_v.square()  # (B, C, H', W')
    else:
        # (B, 1, H', W'): ||dV||_2**2 / C_v, i.e. d = the L2 norm over channels divided by sqrt(C_v) (ours)
        squared = diff_v.square().mean(dim=1, keepdim=True)
    del diff_v
    # S(d) = 1 / sqrt(1 + d**2 / lambda**2), in place on `squared` (autograd-safe: scalar mul/add save nothing and
    # rsqrt saves its own result), so a tap holds at most 4 maps of (B, C, H', W') at once
    similarity = squared.mul_(inv_lambda_sq).add_(1.0).rsqrt_()
    term = similarity * diff_u  # (B, C_in, H', W')
    del diff_u, similarity, squared
    # (C_out, C_in / groups, 3, 3) -> (C_out, C_in / groups, 1, 1): this tap's weights as a grouped 1x1 convolution
    tap_weight = weight[:, :, ky : ky + 1, kx : kx + 1]
    return F.conv2d(term, tap_weight, groups=groups)  # (B, C_out, H', W')


def _semantic_difference_convolution_for_export(
    features: torch.Tensor,
    guidance: torch.Tensor,
    weight: torch.Tensor,
    inv_lambda_sq: float,
    per_channel: bool,
    groups: int,
) -> torch.Tensor:
    """:func:`semantic_difference_convolution` as it is traced for export: every tap over the whole (B, C, H, W) map,
    its neighbours read from U and V zero-padded by one pixel, and its contribution kept (``torch.where``) only where
    the neighbour is inside the image; the values equal the eager sum within float rounding. Nothing depends on
    whether a size is 1 (the eager version skips a tap and slices an empty region there, neither of which an export
    can reproduce: the graph is traced once for every size)."""
    batch, _, height, width = features.shape
    padded_features = F.pad(features, (1, 1, 1, 1))  # (B, C, H + 2, W + 2)
    padded_guidance = F.pad(guidance, (1, 1, 1, 1))
    rows = torch.arange(height, device=features.device)
    columns = torch.arange(width, device=features.device)
    output = features.new_zeros((batch, weight.shape[0], height, width))
    for ky, kx, dy, dx in _TAPS:
        # (B, C, H, W): U(p0 + pn) and V(p0 + pn), zero where p0 + pn is outside the image
        neighbour_features = padded_features[:, :, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        neighbour_guidance = padded_guidance[:, :, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        diff_v = neighbour_guidance - guidance
        squared = diff_v.square() if per_channel else diff_v.square().mean(dim=1, keepdim=True)
        similarity = squared.mul(inv_lambda_sq).add(1.0).rsqrt()
        term = similarity * (neighbour_features - features)
        contribution = F.conv2d(term, weight[:, :, ky : ky + 1, kx : kx + 1], groups=groups)
        # (H, W): the pixels whose neighbour is inside the image
        inside = ((rows + dy >= 0) & (rows + dy < height))[:, None] & ((columns + dx >= 0) & (columns + dx < width))
        output = output + torch.where(inside, contribution, torch.zeros_like(contribution)).to(output.dtype)
    return output


def semantic_difference_convolution(
    features: torch.Tensor,
    guidance: torch.Tensor,
    weight: torch.Tensor,
    lambda_: float,
    similarity: str = "per_channel",
    groups: int = 1,
    recompute: bool = True,
) -> torch.Tensor:
    """Semantic difference convolution (SDC), 3x3, stride 1, output size = input size:

        Y_k(p0) = sum_c sum_n W[k, c, n] * S_c(p0, pn) * (U_c(p0 + pn) - U_c(p0)),  S(d) = 1 / sqrt(1 + d**2 / lambda**2)

    over the neighbours p0 + pn inside the image (out-of-image neighbours contribute nothing; ours), c running over
    the input channels of output channel k's group.

    Args:
        features: U, (B, C_in, H, W).
        guidance: V, (B, C_in, H, W) for ``similarity="per_channel"``; (B, C_v, H, W) with any C_v for ``"l2"``.
        weight: W, (C_out, C_in / groups, 3, 3), as a grouped ``nn.Conv2d``'s weight (``groups = C_in = C_out``:
            a depthwise SDC).
        lambda_: lambda > 0, the edge scale of the similarity S: guidance differences much smaller than lambda
            diffuse freely (S ~ 1), much larger ones block the diffusion (S ~ lambda / |d|).
        similarity: ``"per_channel"``: S_c from d = V_c(p0 + pn) - V_c(p0), one value per channel [secondary];
            ``"l2"``: one S per neighbour from d = ||V(p0 + pn) - V(p0)||_2 / sqrt(C_v) [reconstructed; the division
            by sqrt(C_v), which keeps lambda's meaning independent of the width, is ours].
        groups: as in a grouped convolution.
        recompute: in training (grad enabled and some input requiring grad), recompute each tap in the backward
            pass instead of keeping its intermediate tensors, so memory stays O(B*C*H*W) in training too (ours).

    Returns:
        Y, (B, C_out, H, W), in the dtype of ``features``.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}; got {similarity!r}")
    if not lambda_ > 0:
        raise ValueError(f"lambda_ must be > 0; got {lambda_}")
    if features.ndim != 4 or guidance.ndim != 4:
        raise ValueError(
            f"features and guidance must be (B, C, H, W); got {tuple(features.shape)} and {tuple(guidance.shape)}"
        )
    batch, in_channels, height, width = features.shape
    if similarity == "per_channel" and guidance.shape != features.shape:
        raise ValueError(
            f"per-channel similarity needs guidance of the features' shape {tuple(features.shape)}; got "
            f"{tuple(guidance.shape)}"
        )
    if guidance.shape[0] != batch or guidance.shape[-2:] != features.shape[-2:]:
        raise ValueError(
            f"guidance {tuple(guidance.shape)} must match the features {tuple(features.shape)} in batch and size"
        )
    out_channels = weight.shape[0]
    if (
        weight.ndim != 4
        or weight.shape[-2:] != (3, 3)
        or in_channels % groups
        or out_channels % groups
        or weight.shape[1] * groups != in_channels
    ):
        raise ValueError(
            f"weight must be (C_out, C_in / groups, 3, 3) with C_in = {in_channels}, groups = {groups} dividing "
            f"C_in and C_out; got {tuple(weight.shape)}"
        )
    per_channel = similarity == "per_channel"
    inv_lambda_sq = 1.0 / float(lambda_) ** 2
    use_checkpoint = (
        recompute
        and torch.is_grad_enabled()
        and (features.requires_grad or guidance.requires_grad or weight.requires_grad)
    )

    if torch.compiler.is_exporting():  # no size-1 branch, no empty slice in the traced graph (see the module's doc)
        return _semantic_difference_convolution_for_export(
            features, guidance, weight, inv_lambda_sq, per_channel, groups
        )
    output = features.new_zeros((batch, out_channels, height, width))  # (B, C_out, H, W), the running sum
    for ky, kx, dy, dx in _TAPS:
        rows, _ = _valid_slices(height, dy)
        cols, _ = _valid_slices(width, dx)
        if abs(dy) >= height or abs(dx) >= width:
            continue  # no pixel has this neighbour inside the image (a 1-pixel-high or -wide map)
        args = (features, guidance, weight, ky, kx, inv_lambda_sq, per_channel, groups)
        if use_checkpoint:
            contribution = checkpoint(_tap_contribution, *args, use_reentrant=False)
        else:
            contribution = _tap_contribution(*args)
        # the tap only reaches the pixels whose neighbour is inside the image (the others get nothing: ours)
        output[:, :, rows, cols] += contribution.to(output.dtype)
    return output


class SemanticDifferenceConvolution(nn.Module):
    """The SDC as a module: a learnable 3x3 weight (C_out, C_in / groups, 3, 3), no bias (a constant would be
    removed by the BatchNorm that follows in :class:`SDNLevel`). See :func:`semantic_difference_convolution`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        lambda_: float = 1.0,
        similarity: str = "per_channel",
        groups: int = 1,
        recompute: bool = True,
    ):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}; got {similarity!r}")
        if not lambda_ > 0:
            raise ValueError(f"lambda_ must be > 0; got {lambda_}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.lambda_ = float(lambda_)
        self.similarity = similarity
        self.groups = groups
        self.recompute = recompute
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 3, 3))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, features: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return semantic_difference_convolution(
            features, guidance, self.weight, self.lambda_, self.similarity, self.groups, self.recompute
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, lambda_={self.lambda_}, similarity={self.similarity!r}, "
            f"groups={self.groups}"
        )


class SDNLevel(nn.Module):
    """One pyramid level of the neck: U (B, C, H, W) enhanced under the guidance G (B, C_g, H_g, W_g) of any size.

    1. ``guide_proj`` (1x1 conv C_g -> D, with bias; ours), then bilinear upsampling (align_corners False) to U's
       size: V. The projection runs at the guidance's (coarser) size; a 1x1 convolution commutes with bilinear
       resampling, so the order only changes the cost.
    2. ``Y = ReLU(norm(sdc(U', V)))`` with a D -> D SDC (no bias) and ``norm`` a BatchNorm2d(D) [secondary]. The
       diffusion width D is ``width`` (ours): None (default) is the level's own C and U' = U; a number projects U
       first (``input_proj``, 1x1 conv C -> D with bias), so a narrow D makes the neck cheap on wide levels.
    3. ``fuse`` (1x1 conv C + D -> C, with bias) over ``cat([U, Y])`` [secondary]: a learned explicit-Euler update
       "U + step * Y" (reconstructed reading). Output: (B, C, H, W).
    """

    def __init__(
        self,
        channels: int,
        guide_channels: int,
        lambda_: float = 1.0,
        similarity: str = "per_channel",
        groups: int = 1,
        recompute: bool = True,
        width: int | None = None,
    ):
        super().__init__()
        diffusion_width = channels if width is None else int(width)
        self.input_proj = None if width is None else nn.Conv2d(channels, diffusion_width, kernel_size=1)
        self.guide_proj = nn.Conv2d(guide_channels, diffusion_width, kernel_size=1)
        self.sdc = SemanticDifferenceConvolution(
            diffusion_width, diffusion_width, lambda_, similarity, groups, recompute
        )
        self.norm = nn.BatchNorm2d(diffusion_width)
        self.activation = nn.ReLU()
        self.fuse = nn.Conv2d(channels + diffusion_width, channels, kernel_size=1)
        init_sdn_weights(self)

    def forward(self, features: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        guide = self.guide_proj(guidance)  # (B, C, H_g, W_g)
        if guide.shape[-2:] != features.shape[-2:]:
            # any size ratio (odd sizes included): resample straight to U's size
            guide = F.interpolate(guide, size=features.shape[-2:], mode="bilinear", align_corners=False)
        diffused = features if self.input_proj is None else self.input_proj(features)  # (B, D, H, W)
        diffusion = self.activation(self.norm(self.sdc(diffused, guide)))  # (B, D, H, W)
        return self.fuse(torch.cat([features, diffusion], dim=1))  # (B, C + D, H, W) -> (B, C, H, W)


def _resolve_groups(groups: int | str, channels: int, what: str) -> int:
    if groups == "depthwise":
        return channels
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or channels % groups:
        raise ValueError(f"{what} must be 'depthwise' or a positive int dividing {channels}; got {groups!r}")
    return groups


class SDNNeck(nn.Module):
    """SDN-style neck (unofficial reconstruction; no official code exists) for a multi-scale decoder (paper variant
    "(b)", [secondary]): one :class:`SDNLevel` per pyramid level, level i guided by the neck's *input* at level i + 1,
    the deepest level by ``top_guide``, a 3x3 stride-2 padding-1 convolution C_L -> C_L of itself. Every output has
    its input's shape, so the decoder is unchanged.

    Args:
        in_channels: the channels of the levels, finest first (e.g. Swin-B's (128, 256, 512, 1024)).
        lambda_: the similarity's edge scale lambda (default 1.0: ours; the learnable ``guide_proj`` can rescale the
            guidance, so lambda mainly sets the regime at initialisation).
        similarity: ``"per_channel"`` (default; the secondary sources' form) or ``"l2"`` (ours, reconstructed).
        groups: the SDC's groups, ``"depthwise"`` (default, ours: the paper calls SDN efficient, and full 3x3 weights
            cost 9 C**2 per level) or an int dividing every level's channels (1: full weights).
        top_guide_groups: the groups of ``top_guide``; ``None`` (default) follows ``groups`` (so depthwise by default,
            ours) and with it ``groups=1`` gives the full-weight neck.
        recompute: recompute the SDC's taps in the backward pass (default True, ours); see
            :func:`semantic_difference_convolution`.
        width: the diffusion width of every level (ours): None (default) diffuses at each level's own channels; a
            number projects each level to it first (:class:`SDNLevel`), e.g. the decoder's width.

    Initialisation (:func:`init_sdn_weights`, run at construction; ours): convolutions kaiming-normal (fan-out, ReLU)
    with zero bias, BatchNorm weight 1 / bias 0, and ``fuse`` = [I | 0] with zero bias, so the neck starts as the
    identity on its inputs: switching it on in a pretrained model does not change the model's output at
    initialisation (exactly in float32/float64 on CPU; to TF32 rounding where cuDNN uses TF32). At that point only the
    ``fuse`` weights receive gradient (dY is multiplied by fuse's zero half); after the first update the rest follow,
    as with a zero-initialised residual branch.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        lambda_: float = 1.0,
        similarity: str = "per_channel",
        groups: int | str = "depthwise",
        top_guide_groups: int | str | None = None,
        recompute: bool = True,
        width: int | None = None,
    ):
        super().__init__()
        if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
            raise ValueError(f"width must be None or a positive number of channels; got {width!r}")
        in_channels = [int(c) for c in in_channels]
        if not in_channels:
            raise ValueError("in_channels must name at least one level")
        self.in_channels = in_channels
        guide_channels = in_channels[1:] + in_channels[-1:]  # level i is guided by level i + 1; the last by top_guide
        self.levels = nn.ModuleList(
            SDNLevel(
                channels,
                guide,
                lambda_,
                similarity,
                _resolve_groups(groups, channels if width is None else width, "groups"),
                recompute,
                width,
            )
            for channels, guide in zip(in_channels, guide_channels)
        )
        deepest = in_channels[-1]
        top_groups = _resolve_groups(
            groups if top_guide_groups is None else top_guide_groups, deepest, "top_guide_groups"
        )
        self.top_guide = nn.Conv2d(deepest, deepest, kernel_size=3, stride=2, padding=1, groups=top_groups)
        init_sdn_weights(self)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(features) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} feature maps; got {len(features)}")
        for index, (feature, channels) in enumerate(zip(features, self.in_channels)):
            if feature.ndim != 4 or feature.shape[1] != channels:
                raise ValueError(f"feature map {index} must be (B, {channels}, H, W); got {tuple(feature.shape)}")
        # every level is guided by the neck's inputs, not its outputs, so the levels are independent (ours)
        guides = list(features[1:]) + [self.top_guide(features[-1])]  # top: (B, C_L, ceil(H_L / 2), ceil(W_L / 2))
        return tuple(level(feature, guide) for level, feature, guide in zip(self.levels, features, guides))


def sdn_neck(config, in_channels: Sequence[int]) -> "SDNNeck | None":
    """The neck a segmentation config asks for: an :class:`SDNNeck` over the backbone's ``in_channels`` with the
    config's ``sdn_lambda``, ``sdn_similarity`` and ``sdn_groups`` when ``config.use_sdn_neck``, else None (the model
    then has no neck module and no neck keys)."""
    if not getattr(config, "use_sdn_neck", False):
        return None
    try:
        return SDNNeck(
            list(in_channels),
            lambda_=config.sdn_lambda,
            similarity=config.sdn_similarity,
            groups=config.sdn_groups,
            width=getattr(config, "sdn_width", None),
        )
    except ValueError as error:  # a value that does not fit the backbone's widths, named as the config names it
        raise ValueError(
            f"{type(config).__name__}: the SDN neck over levels of {list(in_channels)} channels (sdn_groups="
            f"{config.sdn_groups!r}, sdn_width={getattr(config, 'sdn_width', None)!r}): {error}"
        ) from None


def init_sdn_weights(module: nn.Module, init=nn.init) -> None:
    """Initialises every SDN part inside ``module`` (itself included): convolutions and the SDC weight kaiming-normal
    (fan-out, ReLU) with zero bias, BatchNorm weight 1 / bias 0 with reset running statistics, and each level's
    ``fuse`` = [I | 0] (identity on U, zero on Y) with zero bias, so the neck starts as the identity (ours).

    ``init``: a namespace with ``kaiming_normal_``, ``zeros_``, ``ones_`` and ``dirac_`` (``torch.nn.init`` by
    default; a transformers model's ``_init_weights`` passes ``transformers.initialization``, whose functions leave
    loaded weights alone). Only SDN modules are touched, so a model's ``_init_weights`` can call it on each module it
    visits: torch and transformers visit children before parents, and the call on an :class:`SDNLevel` /
    :class:`SDNNeck` then overrides whatever generic rule reached their plain convolutions first."""

    def kaiming(conv: nn.Module) -> None:
        init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if getattr(conv, "bias", None) is not None:
            init.zeros_(conv.bias)

    for part in module.modules():
        if isinstance(part, SDNNeck):
            kaiming(part.top_guide)
        elif isinstance(part, SDNLevel):
            if part.input_proj is not None:
                kaiming(part.input_proj)
            kaiming(part.guide_proj)
            kaiming(part.sdc)
            init.ones_(part.norm.weight)
            init.zeros_(part.norm.bias)
            init.zeros_(part.norm.running_mean)
            init.ones_(part.norm.running_var)
            init.zeros_(part.norm.num_batches_tracked)
            # (C, C + D, 1, 1): weight[k, k] = 1 for k < C, zero elsewhere, i.e. [I | 0]: fuse(cat([U, Y])) = U
            init.dirac_(part.fuse.weight)
            init.zeros_(part.fuse.bias)
        elif isinstance(part, SemanticDifferenceConvolution):
            kaiming(part)


__all__ = [
    "SDNLevel",
    "SDNNeck",
    "SemanticDifferenceConvolution",
    "init_sdn_weights",
    "sdn_neck",
    "semantic_difference_convolution",
]
