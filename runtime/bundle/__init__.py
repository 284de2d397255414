"""The contract between compiler and nodes: the bundle format, its DSSE envelope, canonical bytes,
keys, and reading a bundle (verify, then validate); plus how a node fetches, activates and polls one.

Imports nothing else of gwc: the compiler builds on it and every node part reads through it.
"""
