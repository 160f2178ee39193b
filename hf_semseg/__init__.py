"""hf-semseg: SeMask-Swin, VWFormer and Pale Transformer semantic segmentation models for Hugging Face transformers.

Importing the package registers every config, model, backbone and image processor with transformers' Auto classes,
and marks the classes for auto-class saving, so ``save_pretrained`` writes ``auto_map`` and copies the model code:
a saved folder then loads with ``trust_remote_code=True`` without this package.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
)

from .models.semask_swin import (
    SeMaskImageProcessor,
    SeMaskImageProcessorPil,
    SeMaskSemanticSegmenterOutput,
    SeMaskSwinBackbone,
    SeMaskSwinBackboneOutput,
    SeMaskSwinConfig,
    SeMaskSwinForSemanticSegmentation,
    SeMaskSwinModel,
    SeMaskSwinModelOutput,
    SeMaskSwinPreTrainedModel,
)
from .variants import Variant, dataset_labels, get_variant, list_variants, register_variant, variant_config


__version__ = "0.1.0"


def _register_auto_classes() -> None:
    AutoConfig.register(SeMaskSwinConfig.model_type, SeMaskSwinConfig, exist_ok=True)
    AutoModel.register(SeMaskSwinConfig, SeMaskSwinModel, exist_ok=True)
    AutoBackbone.register(SeMaskSwinConfig, SeMaskSwinBackbone, exist_ok=True)
    AutoModelForSemanticSegmentation.register(SeMaskSwinConfig, SeMaskSwinForSemanticSegmentation, exist_ok=True)
    AutoImageProcessor.register(
        SeMaskSwinConfig,
        image_processor_classes={"torchvision": SeMaskImageProcessor, "pil": SeMaskImageProcessorPil},
        exist_ok=True,
    )
    SeMaskSwinConfig.register_for_auto_class("AutoConfig")
    SeMaskSwinModel.register_for_auto_class("AutoModel")
    SeMaskSwinBackbone.register_for_auto_class("AutoBackbone")
    SeMaskSwinForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
    SeMaskImageProcessor.register_for_auto_class("AutoImageProcessor")
    SeMaskImageProcessorPil.register_for_auto_class("AutoImageProcessor")


_register_auto_classes()

__all__ = [
    "SeMaskImageProcessor",
    "SeMaskImageProcessorPil",
    "SeMaskSemanticSegmenterOutput",
    "SeMaskSwinBackbone",
    "SeMaskSwinBackboneOutput",
    "SeMaskSwinConfig",
    "SeMaskSwinForSemanticSegmentation",
    "SeMaskSwinModel",
    "SeMaskSwinModelOutput",
    "SeMaskSwinPreTrainedModel",
    "Variant",
    "dataset_labels",
    "get_variant",
    "list_variants",
    "register_variant",
    "variant_config",
]
