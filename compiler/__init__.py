"""gwc compiler: validates a registry repo and compiles it into one signed bundle."""
