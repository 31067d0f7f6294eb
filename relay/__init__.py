"""relay: a bytes-oriented file-transfer relay (server and the wire protocol shared with clients)."""

__version__ = "0.1.0"
