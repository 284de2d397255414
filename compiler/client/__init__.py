"""The ``gwc`` command's side of a running gateway: client configurations, the approvals and bypass
API client, and the development identity provider.
"""
