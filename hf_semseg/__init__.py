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

from .models.configuration_pale import PaleConfig
from .models.configuration_semask_mask2former import SeMaskMask2FormerConfig
from .models.configuration_semask_maskformer import SeMaskMaskFormerConfig
from .models.configuration_semask_swin import SeMaskSwinConfig
from .models.configuration_vw_mask2former import VWMask2FormerConfig
from .models.configuration_vw_maskformer import VWMaskFormerConfig
from .models.configuration_vwformer import VWFormerConfig
from .models.image_processing_keep_ratio import KeepRatioImageProcessor, SeMaskImageProcessor
from .models.image_processing_pil_keep_ratio import KeepRatioImageProcessorPil, SeMaskImageProcessorPil
from .models.image_processing_pil_semask_mask2former import SeMaskMask2FormerImageProcessorPil
from .models.image_processing_semask_mask2former import SeMaskMask2FormerImageProcessor
from .models.modeling_pale import (
    PaleBackbone,
    PaleForImageClassification,
    PaleForSemanticSegmentation,
    PaleModel,
    PaleModelOutput,
    PalePreTrainedModel,
    PaleSemanticSegmenterOutput,
)
from .models.modeling_semask_mask2former import (
    SeMaskMask2FormerForSemanticSegmentation,
    SeMaskMask2FormerModel,
    SeMaskMask2FormerPreTrainedModel,
    SeMaskMask2FormerSemanticSegmenterOutput,
)
from .models.modeling_semask_maskformer import (
    SeMaskMaskFormerForSemanticSegmentation,
    SeMaskMaskFormerModel,
    SeMaskMaskFormerPreTrainedModel,
    SeMaskMaskFormerSemanticSegmenterOutput,
)
from .models.modeling_semask_swin import (
    SeMaskSemanticSegmenterOutput,
    SeMaskSwinBackbone,
    SeMaskSwinBackboneOutput,
    SeMaskSwinForSemanticSegmentation,
    SeMaskSwinModel,
    SeMaskSwinModelOutput,
    SeMaskSwinPreTrainedModel,
)
from .models.modeling_vw_mask2former import (
    VWMask2FormerForSemanticSegmentation,
    VWMask2FormerModel,
    VWMask2FormerPreTrainedModel,
    VWMask2FormerSemanticSegmenterOutput,
)
from .models.modeling_vw_maskformer import (
    VWMaskFormerForSemanticSegmentation,
    VWMaskFormerModel,
    VWMaskFormerPreTrainedModel,
    VWMaskFormerSemanticSegmenterOutput,
)
from .models.modeling_vwformer import (
    VWFormerForSemanticSegmentation,
    VWFormerPreTrainedModel,
    VWFormerSemanticSegmenterOutput,
)
from .variants import (
    Variant,
    dataset_labels,
    get_variant,
    list_variants,
    register_variant,
    variant_config,
    variant_image_processor,
)


__version__ = "0.1.0"


def _register_family(config_class, models: dict) -> None:
    """Registers ``config_class`` and its ``{auto class: model class}`` with transformers, marks every class for
    auto-class saving, and gives the family the (shared) keep-ratio image processors."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    config_class.register_for_auto_class("AutoConfig")
    for auto_class, model_class in models.items():
        auto_class.register(config_class, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class.__name__)
    # (the task pipelines' tables of class names list the family where its modeling module is imported:
    # `list_for_pipeline`, which also runs for a folder loaded with trust_remote_code=True)
    AutoImageProcessor.register(
        config_class,
        image_processor_classes={"torchvision": KeepRatioImageProcessor, "pil": KeepRatioImageProcessorPil},
        exist_ok=True,
    )


def _register_auto_classes() -> None:
    KeepRatioImageProcessor.register_for_auto_class("AutoImageProcessor")
    KeepRatioImageProcessorPil.register_for_auto_class("AutoImageProcessor")
    _register_family(
        SeMaskSwinConfig,
        {
            AutoModel: SeMaskSwinModel,
            AutoBackbone: SeMaskSwinBackbone,
            AutoModelForSemanticSegmentation: SeMaskSwinForSemanticSegmentation,
        },
    )
    # Pale has no original pre-processing to reproduce: it shares the mmseg-style keep-ratio processor
    _register_family(
        PaleConfig,
        {
            AutoModel: PaleModel,
            AutoBackbone: PaleBackbone,
            AutoModelForImageClassification: PaleForImageClassification,
            AutoModelForSemanticSegmentation: PaleForSemanticSegmentation,
        },
    )
    # VWFormer's test pipeline is the same keep-ratio resize (+ size_divisor=64 for the ADE20K models)
    _register_family(VWFormerConfig, {AutoModelForSemanticSegmentation: VWFormerForSemanticSegmentation})
    # former names of the keep-ratio processors, which folders saved by earlier versions give as their
    # `image_processor_type`: AutoImageProcessor finds a class by name only among registered ones (the name lookup is
    # not per config), and then loads the "torchvision" / "pil" class of the same entry
    AutoImageProcessor.register(
        SeMaskSwinConfig,
        image_processor_classes={"semask_torchvision": SeMaskImageProcessor, "semask_pil": SeMaskImageProcessorPil},
        exist_ok=True,
    )

    # the detectron2 heads (SeMask and VWFormer's MaskFormer / Mask2Former) share detectron2's test pipeline, so the
    # SeMask Mask2Former processors
    SeMaskMask2FormerImageProcessor.register_for_auto_class("AutoImageProcessor")
    SeMaskMask2FormerImageProcessorPil.register_for_auto_class("AutoImageProcessor")
    for config_class, model, model_for_segmentation in (
        (SeMaskMask2FormerConfig, SeMaskMask2FormerModel, SeMaskMask2FormerForSemanticSegmentation),
        (SeMaskMaskFormerConfig, SeMaskMaskFormerModel, SeMaskMaskFormerForSemanticSegmentation),
        (VWMask2FormerConfig, VWMask2FormerModel, VWMask2FormerForSemanticSegmentation),
        (VWMaskFormerConfig, VWMaskFormerModel, VWMaskFormerForSemanticSegmentation),
    ):
        _register_family(config_class, {AutoModel: model, AutoModelForSemanticSegmentation: model_for_segmentation})
        AutoImageProcessor.register(
            config_class,
            image_processor_classes={
                "torchvision": SeMaskMask2FormerImageProcessor,
                "pil": SeMaskMask2FormerImageProcessorPil,
            },
            exist_ok=True,
        )


_register_auto_classes()
