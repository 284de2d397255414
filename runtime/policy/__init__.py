"""Access semantics (DESIGN.md): who may see and call what, decided by lookups over a bundle.

Imports only ``gwc.runtime.bundle``; the node, replay, catalog, inspect and diff all decide through it.
"""
