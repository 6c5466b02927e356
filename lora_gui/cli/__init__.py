"""The command line: ``python -m lora_gui`` / ``lora-gui``."""
from .main import main, parser

__all__ = ["main", "parser"]
