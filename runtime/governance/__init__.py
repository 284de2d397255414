"""Governance state shared by a fleet: rate limits, approvals and break-glass bypasses, in memory
or in Redis (their HTTP API is gwc.runtime.api.governance).
"""
