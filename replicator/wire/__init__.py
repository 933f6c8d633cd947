"""The replication protocol: versioned checksummed frames and a sans-IO session."""
