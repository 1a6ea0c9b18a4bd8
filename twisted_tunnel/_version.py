"""
The version of twisted-tunnel, in a leaf module: the modules that send it
(HELLO, the info metrics) import it from here, not upward from the package
face.
"""

__version__ = "0.1.0"
"""The version of twisted-tunnel (both ends of a tunnel send it in their HELLO)."""
