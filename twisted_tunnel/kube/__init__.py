"""
The Kubernetes API, for the daemons: a client (L{client}), watches bridged
to the reactor (L{watch}), Events (L{events}), the ConfigMap read
through the API (L{configmap}), and the Nodes watched into the server's
node directory (L{nodes}, with the edge node selector of L{labels}).

Needs the C{kubernetes} extra (C{pip install 'twisted-tunnel[kubernetes]'},
which brings lightkube); the rest of the library never imports this
package, and the daemons import it only when asked to reach the API.  See
C{docs/kubernetes.md}.
"""
