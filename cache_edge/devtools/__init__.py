"""Helpers behind ``cache-edge dev``: local services, demo data and a WAN delay relay."""
