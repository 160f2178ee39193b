from pathlib import Path

from setuptools import find_packages, setup


setup(
    name="hf-semseg",
    version="0.1.0",
    description="SeMask-Swin, VWFormer and Pale Transformer semantic segmentation for Hugging Face transformers",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["hf_semseg", "hf_semseg.*"]),
    package_data={"hf_semseg": ["data/*.json"]},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.23,<6",
        "datasets>=3.0",
        "accelerate>=1.0",
        "evaluate>=0.4",
        "safetensors>=0.4",
        "timm>=1.0",
        "pillow>=10.0",
        "numpy>=1.24",
    ],
    extras_require={
        # parameterized: imported by transformers' common test modules (tests/transformers_tests.py fetches them);
        # onnx / onnxscript / onnxruntime: the ONNX export and its round trips (hf_semseg.export, tests/test_export.py;
        # onnx 1.14 brought opset 19, whose DeformConv carries FaPN's deformable convolution)
        "test": ["pytest>=8.0", "parameterized>=0.9", "onnx>=1.14", "onnxscript", "onnxruntime"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
