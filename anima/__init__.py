"""anima: a standalone engine for the Anima text-to-image models.

Importing this package is cheap: heavy modules (torch models, transformers) load on first use.
Citations such as "anima-spec §2.3" in the code refer to docs/anima-spec.md, the architecture notes
compiled from the reference implementations.
"""

__version__ = "0.1.0"
