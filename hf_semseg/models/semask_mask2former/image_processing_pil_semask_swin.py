"""Alias of ``hf_semseg.models.semask_swin.image_processing_pil_semask_swin``.

The SeMask Mask2Former modules import SeMask-Swin as a sibling module (``from .image_processing_pil_semask_swin import ...``), the only
form of import that transformers' remote code supports, so that a saved model folder is flat and loads without
hf_semseg. Inside the package this file makes that name the real module (the same classes, not a copy); the
``save_pretrained`` methods of the family write the real module's source in its place.
"""

import importlib
import sys


sys.modules[__name__] = importlib.import_module("..semask_swin.image_processing_pil_semask_swin", __package__)
