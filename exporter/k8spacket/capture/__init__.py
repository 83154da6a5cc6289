"""Live packet capture: interface discovery and AF_PACKET rings."""
