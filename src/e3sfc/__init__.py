"""e3sfc: communication-efficient federated learning by synthesizing features.

Implements 3SFC (Zhou et al., ICCV 2023) and E-3SFC (Zhou et al., TNNLS 2025)
together with the update compressors they are measured against, with exact
byte accounting in both directions. docs/design.md describes how it works.
"""

__version__ = "0.1.0"
