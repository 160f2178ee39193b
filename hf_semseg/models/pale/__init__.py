from .configuration_pale import PaleConfig
from .modeling_pale import (
    PaleBackbone,
    PaleForImageClassification,
    PaleForSemanticSegmentation,
    PaleModel,
    PaleModelOutput,
    PalePreTrainedModel,
    PaleSemanticSegmenterOutput,
)
