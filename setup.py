"""PixelRNN edge: binarized in-pixel recurrent networks, simulated, exported and run at the edge.

The base install is the device runtime only (numpy, OpenCV, ONNX Runtime, ai-edge-litert):
what a Raspberry Pi needs. Training, export and calibration come with extras.
Pinned versions live in constraints.txt: ``pip install -c constraints.txt -e '.[all]'``.
"""
from setuptools import find_packages, setup

# The device runtime installs on Python 3.11-3.13, x86_64 and aarch64 (Pi OS on Debian 13 has 3.13):
# numpy 1.26 has no 3.13 wheel, so the runtime accepts numpy 2; only [larq] needs numpy<2 (3.11/3.12).
BASE = [
    "numpy>=1.24,<3",
    "opencv-python-headless>=4.8,<5",
    "onnxruntime>=1.17",
    "ai-edge-litert>=1.0",
]
EXTRAS = {
    # numba: the CPU training kernels (pixelrnn.cpu_kernels); without it training takes the PyTorch path
    "train": ["torch>=2.2", "onnx>=1.16", "onnxscript>=0.1", "tqdm>=4.60", "matplotlib>=3.7", "PyYAML>=6",
              "optuna>=4.0", "numba>=0.60"],
    # larq 0.14 needs numpy<2, so [larq] installs on Python 3.11/3.12 only; tflite-runtime 2.14 has cp311 wheels only
    "larq": ["tensorflow>=2.15", "tf-keras>=2.15", "larq>=0.13", "larq-compute-engine>=0.13", "numpy<2",
             'tflite-runtime; python_version < "3.12"'],
    "generative": ["torch>=2.2", "tqdm>=4.60", "scikit-learn>=1.3", "mlxtend>=0.23,<0.25"],
    "test": ["pytest>=8", "pytest-xdist>=3.6", "hypothesis>=6.80", "ruff>=0.6", "selenium>=4.20"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="pixelrnn-edge",
    version="0.1.0",
    description="Binarized in-pixel recurrent networks (PixelRNN): model, sensor simulator, export, edge runtime",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.14",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
    packages=find_packages(include=["core", "core.*", "pixelrnn", "pixelrnn.*", "firmware_sim", "firmware_sim.*",
                                    "edge", "edge.*", "export", "export.*", "calib", "calib.*"]),
    package_data={"pixelrnn": ["models/*.pt", "models/*.md", "models/*/*"]},
    install_requires=BASE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["pixelrnn=core.cli:main", "pixelrnn-camera=edge.camera_entry:main"],
        # the pixelrnn subcommands, each registered by its own room (core.cli): name = module:function [extra]
        "pixelrnn.commands": [
            "simulate = pixelrnn.simulate:add_simulate_parser [train]",
            "evaluate = pixelrnn.evaluate:add_evaluate_parser [train]",
            "train = pixelrnn.train:add_train_parser [train]",
            "sweep = pixelrnn.sweep:add_sweep_parser [train]",
            "generate = pixelrnn.generative.cli:add_generate_parser [generative]",
            "export = export.cli:add_export_parser [train]",
            "calib = calib.cli:add_calib_parser [train]",
            "bench = edge.bench:add_bench_parser",
            "fit-table = edge.fit_table:add_fit_table_parser",
        ],
    },
)
