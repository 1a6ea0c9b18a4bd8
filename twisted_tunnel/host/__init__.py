"""
What the server changes on its host so that clients reach it unchanged:
iptables DNAT of the routed nodes' ports (L{iptables}) and a hosts file of
their names (L{hostsfile}).
"""
