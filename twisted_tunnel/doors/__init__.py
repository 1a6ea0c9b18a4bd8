"""
The server's front doors, where clients come in: the HTTP CONNECT door
(L{connect}), static forwards (L{forward}), the proxy listeners (L{proxy}),
and the bounds on what their clients may hold (L{limits}).
"""
