"""
twisted-tunnel: reach Kubernetes edge nodes behind NAT through tunnels that
their agents dial out, one mutually authenticated TLS connection per agent.
"""

__version__ = "0.1.0"
