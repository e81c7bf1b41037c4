"""Where uplab keeps its data and outputs: the project root.

``$UPLAB_ROOT`` when set; else the source checkout the package runs from (``make setup``
installs it editable, so ``src/uplab/`` sits two levels below the checkout's ``conf/``); else, for
a package installed from a wheel (no checkout around it), the current directory. The config tree
reads it as ``${uplab.project_root:}`` (conf/paths/default.yaml), so ``uplab-train`` writes
``outputs/`` and ``data/toy/`` into the same place from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

ENV = "UPLAB_ROOT"


def project_root() -> Path:
    """The project root (see the module docstring)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "conf" / "train.yaml").is_file() and (checkout / "pyproject.toml").is_file():
        return checkout
    return Path.cwd()


OmegaConf.register_new_resolver("uplab.project_root", lambda: str(project_root()), replace=True)
