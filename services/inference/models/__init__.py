"""Model implementations and the registry of models this server knows how to load."""
