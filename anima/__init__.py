"""anima: a standalone engine for the Anima text-to-image models.

Importing this package is cheap: heavy modules (torch models, transformers) load on first use.
"""

__version__ = "0.1.0"
