"""The FLAME + DECA model path, on the user's own licensed files (never shipped with the project)."""
