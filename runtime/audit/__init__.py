"""The audit chain: what a record holds, how records are encoded, linked, checkpointed and verified,
and the writer that makes them durable off the event loop.

Imports only ``gwc.runtime.bundle``: the offline tools (``gwc audit verify|query|replay``) use it
without loading the node.
"""
