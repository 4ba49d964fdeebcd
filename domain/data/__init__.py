"""Data files shipped with the service (device profiles, ...), read with importlib.resources."""
