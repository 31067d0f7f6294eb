"""Clients of the relay: the Python client library, the `relay` command, and the web page's assets."""
