from .configuration_vwformer import VWFORMER_HEAD_TYPES, VWFormerConfig
from .modeling_vwformer import (
    VWFormerForSemanticSegmentation,
    VWFormerHead,
    VWFormerPreTrainedModel,
    VWFormerSemanticSegmenterOutput,
    VWFormerVaryingWindowAttention,
)
