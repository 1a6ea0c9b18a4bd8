"""
HTTP/1.1 for the proxy listeners: the parser (L{h1}), error responses
(L{responses}) and the proxy engine (L{engine}).
"""
