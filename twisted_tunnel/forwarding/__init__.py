"""
What may be forwarded, and how: the C{edge-tunnel-server-cfg} ConfigMap
(L{config}) and the forwarding policies that decide each connection or
request (L{policy}).
"""
