"""Offline readers of an audit trail: ``gwc audit query|replay|verify``. They load neither aiohttp nor
Prometheus: only ``gwc.runtime.audit``, ``gwc.runtime.policy`` and ``gwc.runtime.bundle``.
"""
