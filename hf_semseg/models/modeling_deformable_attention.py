"""Multi-scale deformable attention of the Mask2Former-style pixel decoders, computed by gathering at CPU inference.

Paper: Zhu, Su, Lu, Li, Wang, Dai, "Deformable DETR: Deformable Transformers for End-to-End Object Detection", ICLR
2021 (Sec. 4.1, eq. 3): every query ``q`` and head ``m`` sums, over levels ``l`` and points ``k``,
``A[q, m, l, k] * x_l(p[q, m, l, k])[m]``, ``x_l(p)`` the bilinear sample of level ``l``'s value map at ``p``.

transformers' ``Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention`` computes it as one ``grid_sample`` per
level on ``(B * heads, head_dim, h, w)`` maps, then multiplies by the attention weights and sums: on the CPU that is
one strided sample per channel (85 ms per layer for the three levels of a 640 x 640 image, 8 heads of 32 channels)
and a ``(B * heads, head_dim, queries, levels * points)`` stack before the sum (another 70 ms).

:func:`multi_scale_deformable_attention_by_gathering` computes the same sum as ONE ``embedding_bag``: the value
tokens laid out as they come (``(B, tokens, heads, head_dim)``, one row per token and head) are the table, each
``(query, head)`` is a bag of its ``levels * points * 4`` bilinear corners, and each corner's weight is its bilinear
weight times the point's attention weight. The output rows are ``(B, queries, heads * head_dim)``, the layout the
output projection takes. 4-5x faster at that size; equal to the ``grid_sample`` form within 2e-15 in float64.

:class:`GatheringMultiscaleDeformableAttention` is transformers' module with that computation at eager CPU inference
(:func:`gathers_deformable_attention`); training, tracing (torch.compile, torch.export, ONNX) and other devices run
transformers' forward unchanged. :func:`use_cpu_deformable_encoder` puts it in a pixel decoder, with oneDNN dense
layers: same parameters, same state-dict keys.

Portable module: imports only torch, transformers and sibling modules.
"""

import itertools

import torch
import torch.nn.functional as F
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoder,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerPixelDecoderOutput,
)

from .modeling_linear import needs_gradient, replace_modules, traced, use_onednn_linear


#: zero rows / columns around each level's map: a point whose pixel coordinate is clamped to ``[-2, size]`` touches
#: only these (both of its neighbours along that axis lie outside the map, as they did before the clamp)
BORDER = 2


def multi_scale_deformable_attention_by_gathering(
    value: torch.Tensor,
    spatial_shapes_list: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """transformers' ``multi_scale_deformable_attention`` (bilinear ``grid_sample``, ``padding_mode="zeros"``,
    ``align_corners=False``, weighted by ``attention_weights`` and summed over levels and points) as one
    ``embedding_bag``.

    Args:
        value: ``(B, tokens, heads, head_dim)``, the levels' ``h * w`` tokens concatenated in
            ``spatial_shapes_list``'s order.
        spatial_shapes_list: ``(h, w)`` of every level.
        sampling_locations: ``(B, queries, heads, levels, points, 2)``, ``(x, y)`` in ``[0, 1]`` of each level's map.
        attention_weights: ``(B, queries, heads, levels, points)``.

    Returns:
        ``(B, queries, heads * head_dim)``.

    Each location goes to pixel coordinates as ``grid_sample`` takes it there (``(2 p - 1 + 1) * size / 2 - 0.5``);
    its top-left corner is clamped to ``[-BORDER, size]``, so a point outside the map still contributes zero. The
    value maps are padded with ``BORDER`` zero rows and columns on every side: every corner of every point is a row
    of the table, and a corner outside the map reads a zero (``grid_sample``'s zero padding). A location that is not
    finite makes its bag NaN, as in the ``grid_sample`` form.
    """
    batch_size, num_tokens, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    if num_tokens != sum(height * width for height, width in spatial_shapes_list):
        raise ValueError(
            f"value has {num_tokens} tokens, but the levels {spatial_shapes_list} have "
            f"{sum(height * width for height, width in spatial_shapes_list)}"
        )
    device, dtype = sampling_locations.device, sampling_locations.dtype
    # (B, h * w, heads, head_dim) -> (B, h + 2 BORDER, w + 2 BORDER, heads * head_dim) per level, zeros around
    levels = value.split([height * width for height, width in spatial_shapes_list], dim=1)
    table = torch.cat(
        [
            F.pad(level.reshape(batch_size, height, width, -1), (0, 0) + (BORDER, BORDER) * 2).flatten(1, 2)
            for level, (height, width) in zip(levels, spatial_shapes_list)
        ],
        dim=1,
    )  # (B, padded tokens, heads * head_dim)
    padded_tokens = table.shape[1]
    # per level: (w, h), the padded width, the first padded token
    sizes = torch.tensor([[width, height] for height, width in spatial_shapes_list], dtype=dtype, device=device)
    padded_widths = torch.tensor([width + 2 * BORDER for _, width in spatial_shapes_list], device=device)
    padded_areas = [(height + 2 * BORDER) * (width + 2 * BORDER) for height, width in spatial_shapes_list]
    level_starts = torch.tensor([0, *padded_areas[:-1]], device=device).cumsum(0)

    # (B, queries, heads, levels, points, 2): pixel coordinates, (x, y)
    pixels = (2 * sampling_locations - 1 + 1) * (sizes[:, None, :] / 2) - 0.5
    low = pixels.floor()
    fraction = pixels - low  # NaN where the location is not finite: its bag sums to NaN, as in the grid_sample form
    # the top-left corner in the padded map, the coordinate clamped to [-BORDER, size]
    low = torch.nan_to_num(low, nan=-BORDER).clamp(min=-BORDER).minimum(sizes[:, None, :]).long() + BORDER
    # the table row of each point's top-left corner and head: (B, queries, heads, levels, points)
    top_left = level_starts[:, None] + low[..., 1] * padded_widths[:, None] + low[..., 0]
    top_left = top_left + torch.arange(batch_size, device=device).view(-1, 1, 1, 1, 1) * padded_tokens
    top_left = top_left * num_heads + torch.arange(num_heads, device=device).view(-1, 1, 1)
    # corners (y0 x0, y0 x1, y1 x0, y1 x1) as row offsets from the top-left one: (levels, 4)
    corner_offsets = torch.stack(
        [torch.zeros_like(padded_widths), torch.ones_like(padded_widths), padded_widths, padded_widths + 1], dim=-1
    )
    corners = top_left[..., None] + (corner_offsets * num_heads)[:, None, :]  # (..., points, 4)
    fraction_x, fraction_y = fraction.unbind(-1)
    weights_y = torch.stack([1 - fraction_y, fraction_y], dim=-1) * attention_weights[..., None]  # (..., 2)
    weights_x = torch.stack([1 - fraction_x, fraction_x], dim=-1)
    corner_weights = weights_y[..., :, None] * weights_x[..., None, :]  # (..., points, 2, 2) -> 4 corners

    # one bag per (B, query, head) of levels * points * 4 weighted rows of the (B * padded tokens * heads, head_dim)
    # table
    output = F.embedding_bag(
        corners.reshape(batch_size * num_queries * num_heads, num_levels * num_points * 4),
        table.reshape(batch_size * padded_tokens * num_heads, head_dim),
        mode="sum",
        per_sample_weights=corner_weights.reshape(batch_size * num_queries * num_heads, -1).to(value.dtype),
    )
    return output.view(batch_size, num_queries, num_heads * head_dim)


def deformable_attention_projections(
    module: Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_embeddings: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The projections of transformers' deformable-attention ``module`` (its forward's first half): the queries are
    ``hidden_states + position_embeddings``; returns the value ``(B, tokens, heads, head_dim)`` (zero where
    ``attention_mask`` is True), the sampling offsets ``(B, queries, heads, levels, points, 2)`` (``(x, y)`` in
    pixels of each level) and the softmaxed attention weights ``(B, queries, heads, levels, points)``."""
    if position_embeddings is not None:
        hidden_states = hidden_states + position_embeddings
    batch_size, num_queries, _ = hidden_states.shape
    sequence_length = encoder_hidden_states.shape[1]
    heads, levels, points = module.n_heads, module.n_levels, module.n_points
    value = module.value_proj(encoder_hidden_states)
    if attention_mask is not None:
        value = value.masked_fill(attention_mask[..., None], 0.0)  # True marks a padded token
    # (B, tokens, C) -> (B, tokens, heads, head_dim)
    value = value.view(batch_size, sequence_length, heads, module.d_model // heads)
    # (B, queries, heads * levels * points * 2) -> (B, queries, heads, levels, points, 2)
    sampling_offsets = module.sampling_offsets(hidden_states).view(batch_size, num_queries, heads, levels, points, 2)
    attention_weights = module.attention_weights(hidden_states).view(batch_size, num_queries, heads, levels * points)
    attention_weights = attention_weights.softmax(-1).view(batch_size, num_queries, heads, levels, points)
    return value, sampling_offsets, attention_weights


def gathers_deformable_attention(*tensors: torch.Tensor) -> bool:
    """Whether :class:`GatheringMultiscaleDeformableAttention` computes by gathering: eager CPU inference (nothing
    traced, so exported graphs keep ``grid_sample``; no operand needs a gradient, so training keeps transformers'
    computation and its backward)."""
    if traced() or needs_gradient(*tensors):
        return False
    return all(tensor.device.type == "cpu" for tensor in tensors)


class GatheringMultiscaleDeformableAttention(Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
    """transformers' multi-scale deformable attention of the pixel decoder's encoder (same parameters, same forward
    arguments and outputs), computing eq. 3 by :func:`multi_scale_deformable_attention_by_gathering` at eager CPU
    inference with the encoder's 2-d reference points; otherwise transformers' forward."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        position_embeddings: torch.Tensor | None = None,
        reference_points: torch.Tensor | None = None,
        spatial_shapes_list: list[tuple[int, int]] | None = None,
        level_start_index: torch.Tensor | None = None,
        output_attentions: bool = False,
    ):
        arguments = (hidden_states, encoder_hidden_states, reference_points, self.value_proj.weight)
        if reference_points is None or reference_points.shape[-1] != 2 or not gathers_deformable_attention(*arguments):
            return super().forward(
                hidden_states,
                attention_mask=attention_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                position_embeddings=position_embeddings,
                reference_points=reference_points,
                spatial_shapes_list=spatial_shapes_list,
                level_start_index=level_start_index,
                output_attentions=output_attentions,
            )
        value, sampling_offsets, attention_weights = deformable_attention_projections(
            self, hidden_states, encoder_hidden_states, attention_mask, position_embeddings
        )
        offset_normalizer = torch.tensor(
            [[width, height] for height, width in spatial_shapes_list], device=reference_points.device
        )
        sampling_locations = (
            reference_points[:, :, None, :, None, :]
            + sampling_offsets / offset_normalizer[None, None, None, :, None, :]
        )
        output = multi_scale_deformable_attention_by_gathering(
            value, spatial_shapes_list, sampling_locations, attention_weights
        )
        return self.output_proj(output), attention_weights


def use_gathering_deformable_attention(module: torch.nn.Module) -> None:
    """Replaces every transformers ``Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention`` inside ``module``
    with a :class:`GatheringMultiscaleDeformableAttention` of the same settings, device and dtype (before the weights
    are initialised or loaded; the parameter names are the same)."""
    replace_modules(
        module,
        Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
        lambda child: GatheringMultiscaleDeformableAttention(
            child.d_model, child.n_heads, child.n_levels, child.n_points
        ).to(device=child.value_proj.weight.device, dtype=child.value_proj.weight.dtype),
    )


def use_cpu_deformable_encoder(decoder: torch.nn.Module) -> None:
    """The deformable-attention encoder of a Mask2Former-style pixel decoder (built by transformers) as it runs
    fastest on the CPU, under the same state-dict keys: its attentions :class:`GatheringMultiscaleDeformableAttention`
    (:func:`use_gathering_deformable_attention`), its ``nn.Linear`` layers ``OneDNNLinear`` (``use_onednn_linear``).
    Modules already replaced are left as they are."""
    use_gathering_deformable_attention(decoder)
    use_onednn_linear(decoder)


class DeformableEncoderPixelDecoder(Mask2FormerPixelDecoder):
    """transformers' ``Mask2FormerPixelDecoder`` (the original ``MSDeformAttnPixelDecoder``: SeMask-Mask2Former's
    ``msdeformattn``), the same parameters and computation, its encoder as :func:`use_cpu_deformable_encoder` makes
    it, and a forward whose sizes stay symbolic when traced, where transformers' makes a tensor of the level sizes,
    which fixes them in a torch.export program. SeMask's MSFaPN decoder changes how an FPN level is fused
    (:meth:`fuse_fpn_level`), VW-Mask2Former's deformable decoder what follows the encoder."""

    def __init__(self, config, feature_channels: list[int]):
        super().__init__(config, feature_channels=feature_channels)
        use_cpu_deformable_encoder(self)

    def encode(self, features: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """The deformable-attention encoder on the three coarsest maps -> their refined maps, coarsest first."""
        coarsest_first = features[::-1][: self.num_feature_levels]
        inputs_embeds = [projection(x) for projection, x in zip(self.input_projections, coarsest_first)]
        spatial_shapes_list = [tuple(embed.shape[-2:]) for embed in inputs_embeds]
        # (B, C, h, w) -> (B, h * w, C), the levels concatenated
        input_embeds_flat = torch.cat([embed.flatten(2).transpose(1, 2) for embed in inputs_embeds], 1)
        position_embeddings = torch.cat(
            [
                self.position_embedding(x.shape, x.device, x.dtype).flatten(2).transpose(1, 2)
                + self.level_embed[level].view(1, 1, -1)
                for level, x in enumerate(coarsest_first)
            ],
            1,
        )
        split_sizes = [height * width for height, width in spatial_shapes_list]
        # each level's first token, one tensor element per size (new_full): a tensor of the size list
        # (torch.as_tensor) would fix the sizes in a torch.export program, which then refuses any other input size
        starts = [0, *itertools.accumulate(split_sizes[:-1])]
        level_start_index = torch.stack([input_embeds_flat.new_full((), start, dtype=torch.long) for start in starts])
        batch_size = input_embeds_flat.shape[0]
        # no padding mask (the original passes none): every valid ratio is 1
        valid_ratios = input_embeds_flat.new_ones(batch_size, self.num_feature_levels, 2)
        encoder_output = self.encoder(
            inputs_embeds=input_embeds_flat,
            attention_mask=torch.zeros(input_embeds_flat.shape[:2], dtype=torch.bool, device=input_embeds_flat.device),
            position_embeddings=position_embeddings,
            spatial_shapes_list=spatial_shapes_list,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios,
        ).last_hidden_state
        channels = encoder_output.shape[-1]
        # (B, sum h * w, C) -> one (B, C, h, w) map per level
        return [
            tokens.transpose(1, 2).reshape(batch_size, channels, height, width)
            for tokens, (height, width) in zip(encoder_output.split(split_sizes, dim=1), spatial_shapes_list)
        ]

    def fuse_fpn_level(self, index: int, lateral: torch.Tensor, summed: torch.Tensor, output_conv) -> torch.Tensor:
        """FPN level ``index`` (finest last) from its lateral features and their sum with the upsampled coarser level:
        ``layer_k(summed)``."""
        return output_conv(summed)

    def forward(self, features: tuple[torch.Tensor, ...], **kwargs) -> Mask2FormerPixelDecoderOutput:
        levels = self.encode(features)  # strides 32, 16, 8
        fpn_inputs = features[: self.num_fpn_levels][::-1]
        for index, (lateral_conv, output_conv, feature) in enumerate(
            zip(self.lateral_convolutions, self.output_convolutions, fpn_inputs)
        ):
            lateral = lateral_conv(feature)
            summed = lateral + F.interpolate(levels[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            levels.append(self.fuse_fpn_level(index, lateral, summed, output_conv))
        return Mask2FormerPixelDecoderOutput(
            mask_features=self.mask_projection(levels[-1]),
            multi_scale_features=tuple(levels[: self.num_feature_levels]),
        )


__all__ = [
    "DeformableEncoderPixelDecoder",
    "GatheringMultiscaleDeformableAttention",
    "deformable_attention_projections",
    "gathers_deformable_attention",
    "multi_scale_deformable_attention_by_gathering",
    "use_cpu_deformable_encoder",
    "use_gathering_deformable_attention",
]
