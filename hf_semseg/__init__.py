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
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
)

from .models.pale import (
    PaleBackbone,
    PaleConfig,
    PaleForImageClassification,
    PaleForSemanticSegmentation,
    PaleModel,
    PaleModelOutput,
    PalePreTrainedModel,
    PaleSemanticSegmenterOutput,
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

    AutoConfig.register(PaleConfig.model_type, PaleConfig, exist_ok=True)
    AutoModel.register(PaleConfig, PaleModel, exist_ok=True)
    AutoBackbone.register(PaleConfig, PaleBackbone, exist_ok=True)
    AutoModelForImageClassification.register(PaleConfig, PaleForImageClassification, exist_ok=True)
    AutoModelForSemanticSegmentation.register(PaleConfig, PaleForSemanticSegmentation, exist_ok=True)
    # Pale has no original pre-processing to reproduce: it shares the mmseg-style keep-ratio processor
    AutoImageProcessor.register(
        PaleConfig,
        image_processor_classes={"torchvision": SeMaskImageProcessor, "pil": SeMaskImageProcessorPil},
        exist_ok=True,
    )
    PaleConfig.register_for_auto_class("AutoConfig")
    PaleModel.register_for_auto_class("AutoModel")
    PaleBackbone.register_for_auto_class("AutoBackbone")
    PaleForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    PaleForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")


_register_auto_classes()

__all__ = [
    "PaleBackbone",
    "PaleConfig",
    "PaleForImageClassification",
    "PaleForSemanticSegmentation",
    "PaleModel",
    "PaleModelOutput",
    "PalePreTrainedModel",
    "PaleSemanticSegmenterOutput",
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
