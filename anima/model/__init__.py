"""Model code: plain torch modules whose attribute names match the checkpoint keys."""
