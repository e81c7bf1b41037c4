"""uplab: learned feature upsampling for dense prediction (SAPA, FADE and their peers)."""

from uplab import paths as _paths  # noqa: F401  registers ${uplab.project_root:} for the configs
from uplab import weights as _weights  # noqa: F401  registers ${uplab.weights:<name>}

__version__ = "0.1.0"
