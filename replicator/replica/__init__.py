"""The receiving side: RAM copies of every peer's roots, applied batch by batch."""
