"""
The two daemons' command lines: C{Options} and C{makeService} for
C{twistd edge-tunnel-server} and C{twistd edge-tunnel-agent}.
"""
