from pathlib import Path

from setuptools import find_packages, setup


setup(
    name="hf-semseg",
    version="0.1.0",
    description="SeMask-Swin, VWFormer and Pale Transformer semantic segmentation for Hugging Face transformers",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",  # transformers 5.21 and newer require it
    packages=find_packages(include=["hf_semseg", "hf_semseg.*"]),
    package_data={"hf_semseg": ["data/*.json"]},
    # the floors: the oldest releases the test suite passed with, all at once (README, "Supported versions").
    # torch 2.12: the oldest tried that passes (on 2.6-2.9 the packed products' post-ops, torch.compile's graphs or
    # transformers 5's own models fail; 2.10 and 2.11 untried);
    # accelerate 1.15: below it a resumed no-trainer run does not continue the uninterrupted one exactly (1.14 and
    # older; transformers 5.23's Trainer also needs 1.3, the FSDP2 config 1.7); numpy 1.25: below it accelerate
    # cannot reload the RNG states it saved (torch's weights-only unpickler); timm, pillow and safetensors:
    # transformers 5's own floors
    install_requires=[
        "torch>=2.12.1",
        "torchvision>=0.27.1",  # imported by the models (FaPN's deform_conv2d, the torchvision image processors)
        "transformers>=5.23,<6",
        "datasets>=3.0",
        "accelerate>=1.15",
        "evaluate>=0.4",
        "safetensors>=0.8",
        "timm>=1.0.23",
        "pillow>=10.0.1",
        "numpy>=1.25.2",
    ],
    extras_require={
        # parameterized: imported by transformers' common test modules (tests/transformers_tests.py fetches them);
        # onnx / onnxscript / onnxruntime: the ONNX export and its round trips (hf_semseg.export, tests/test_export.py;
        # onnx 1.14 brought opset 19, whose DeformConv carries FaPN's deformable convolution)
        # pytest-xdist: the README's test command runs the suite on every core (-n auto; 10 min on 2 cores, 25 in one
        # process)
        "test": ["pytest>=8.0", "pytest-xdist>=3.0", "parameterized>=0.9", "onnx>=1.14", "onnxscript", "onnxruntime"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
