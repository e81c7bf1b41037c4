"""uplab: learned feature upsampling for dense prediction (SAPA, FADE and their peers)."""

__version__ = "0.1.0"
