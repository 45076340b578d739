"""cosmojax: composable JAX/Flax mixed-RL training for multimodal reasoning models.

Install for development with `make test` (creates .venv, installs with constraints.txt), or
by hand: `pip install -c constraints.txt -e ".[dev]"`.
"""

import setuptools

INSTALL_REQUIRES = [
    "jax",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "tensorflow-datasets",
    "ml_collections",
    "chex",
    "transformers",
    "safetensors",
    "etils",
    "tokenizers",
    "numpy",
    "pillow",
    "pyarrow",
    "math-verify",
    "absl-py",
    "tqdm",
    "tensorboardX",
    "matplotlib",
]

EXTRAS_REQUIRE = {
    # Tests and the PyTorch reference implementation that parity tests compare against.
    # torch is pinned to the CPU build on this machine's disk; never a runtime dependency.
    "dev": [
        "pytest",
        "pytest-timeout",
        "pytest-xdist",
        "hypothesis",
        "torch==2.13.0",
        "nbclient",
        "nbformat",
        "ipykernel",
    ],
    "tpu": ["jax[tpu]"],
    "gpu": ["jax[cuda13]"],
    "xm": ["xmanager"],
}

setuptools.setup(
    name="cosmojax",
    version="0.1.0",
    description="Mixed reinforcement learning for multimodal reasoning models in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["cosmojax", "cosmojax.*", "kernels", "kernels.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
