"""
The version of twisted-tunnel, in a leaf module: the modules that send it
(HELLO, the info metrics) import it from here, not upward from the package
face.
"""

__version__ = "0.1.0"
"""The version of twisted-tunnel (both ends of a tunnel send it in their HELLO)."""


def versionLine(program: str) -> str:
    """
    What C{--version} prints: this program's version first (not Twisted's,
    which C{usage.Options} would print), then what it runs on.
    """
    import sys

    import OpenSSL
    import twisted

    return (
        f"{program} {__version__} (twisted-tunnel; Twisted {twisted.__version__}, "
        f"pyOpenSSL {OpenSSL.__version__}, Python {sys.version.split()[0]})"
    )
