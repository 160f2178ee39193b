from .configuration_semask_swin import SeMaskSwinConfig, semask_fpn_semantic_attention_types
from .modeling_semask_swin import (
    SeMaskSemanticSegmenterOutput,
    SeMaskSwinBackbone,
    SeMaskSwinBackboneOutput,
    SeMaskSwinForSemanticSegmentation,
    SeMaskSwinModel,
    SeMaskSwinModelOutput,
    SeMaskSwinPreTrainedModel,
)
