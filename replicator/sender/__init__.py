"""The origin side: dirty directories become ordered batches streamed to every peer."""
