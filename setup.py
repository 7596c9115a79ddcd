"""Packaging for alignrepro, read from settings.ini (nbdev 2 layout)."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read(Path(__file__).parent / "settings.ini")
cfg = cfg["DEFAULT"]

requirements = cfg.get("requirements", "").split()
dev_requirements = cfg.get("dev_requirements", "").split()
book_requirements = cfg.get("book_requirements", "").split()
paper_requirements = cfg.get("paper_requirements", "").split()
readme = Path(__file__).parent / "README.md"

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license="Apache-2.0",
    url=cfg["git_url"],
    keywords=cfg["keywords"].split(),
    python_requires=">=" + cfg["min_python"],
    packages=setuptools.find_packages(include=["alignrepro", "alignrepro.*"]),
    package_data={"alignrepro": ["py.typed"]},
    install_requires=requirements,
    extras_require={"dev": dev_requirements, "book": book_requirements, "paper": paper_requirements},
    entry_points={
        "console_scripts": cfg.get("console_scripts", "").split(),
        "nbdev": [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"],
    },
    zip_safe=False,
)
