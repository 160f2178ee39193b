from .configuration_semask_mask2former import SeMaskMask2FormerConfig, semask_mask2former_semantic_attention_types
from .image_processing_pil_semask_mask2former import SeMaskMask2FormerImageProcessorPil
from .image_processing_semask_mask2former import SeMaskMask2FormerImageProcessor
from .modeling_semask_mask2former import (
    SeMaskMask2FormerForSemanticSegmentation,
    SeMaskMask2FormerLoss,
    SeMaskMask2FormerModel,
    SeMaskMask2FormerModelOutput,
    SeMaskMask2FormerPreTrainedModel,
    SeMaskMask2FormerSemanticSegmenterOutput,
)
