"""Packaging beyond what pyproject.toml can say: the repository's ``assets/`` (the embedded model's weights) ships
inside the package as ``negprompt/assets``, while in the repository it stays at the root."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["negprompt", "negprompt.*"]), "negprompt.assets"],
    package_dir={"negprompt.assets": "assets"},
    package_data={"negprompt.assets": ["portrait-model/*", "portrait-model/*/*", "portrait-detector/*",
                                       "portrait-embeddings/*"],
                  "negprompt.app": ["examples.json"]},
)
