"""Real-time expression retargeting: a face video drives a 3D avatar built from one photo."""

__version__ = "0.1.0"
