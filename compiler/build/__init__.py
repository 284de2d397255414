"""The build pipeline: read a registry repo, check it, compile it into the payload, sign the bundle;
and the views of a bundle (inspect, diff, codeowners, JSON Schemas).

Imports the contract (``gwc.runtime.bundle``) and the access semantics (``gwc.runtime.policy``),
never a node part.
"""
