"""e3sfc: communication-efficient federated learning by synthesizing features.

Implements 3SFC (Zhou et al., ICCV 2023) and E-3SFC (Zhou et al., TNNLS 2025)
together with the update compressors they are measured against, with exact
byte accounting in both directions. docs/design.md describes how it works.
"""

__version__ = "0.1.0"

from .compress import Compressor, available_methods, make_compressor, register  # noqa: E402
from .compress.base import Context  # noqa: E402
from .config import RunConfig  # noqa: E402
from .data import register_dataset  # noqa: E402
from .federated import Simulation  # noqa: E402
from .models import build_model, register_model  # noqa: E402

register_compressor = register  # a Compressor subclass with a new ``name`` and ``method_id``

__all__ = ["RunConfig", "Simulation", "Compressor", "Context", "make_compressor", "available_methods",
           "register_compressor", "register_model", "register_dataset", "build_model", "__version__"]
