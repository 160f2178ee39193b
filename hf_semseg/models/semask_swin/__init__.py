from .configuration_semask_swin import SeMaskSwinConfig, semask_fpn_semantic_attention_types
from .image_processing_pil_semask_swin import SeMaskImageProcessorPil
from .image_processing_semask_swin import SeMaskImageProcessor
from .modeling_semask_swin import (
    SeMaskSemanticSegmenterOutput,
    SeMaskSwinBackbone,
    SeMaskSwinBackboneOutput,
    SeMaskSwinForSemanticSegmentation,
    SeMaskSwinModel,
    SeMaskSwinModelOutput,
    SeMaskSwinPreTrainedModel,
)
