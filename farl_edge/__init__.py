"""farl-edge: FaRL face models from PyTorch to verified, fast edge inference.

Importing the package does not import torch: the runtime (``farl_edge.runtime``) is torch-free.
"""
__version__ = "0.1.0"

from farl_edge.registry import get_config, list_models

__all__ = ["__version__", "get_config", "list_models"]
