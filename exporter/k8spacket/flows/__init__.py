"""Connection tracking: TCP packets in, connection records out."""
