"""torso: every vision model is a pretrained body plus a task head."""

__version__ = "0.1.0"
