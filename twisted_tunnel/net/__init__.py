"""
The network layer, below the tunnel: socket options (L{sockets}), small facts
about transports (L{transports}), eager small writes (L{eager}), the
original destination of a DNATed connection (L{origdst}), and relays that
splice two transports with back-pressure both ways (L{relay}).

Nothing here knows the tunnel's frames: a tunnel stream is one more
transport, recognised by L{transports.ITunnelStream} where it matters.
"""
