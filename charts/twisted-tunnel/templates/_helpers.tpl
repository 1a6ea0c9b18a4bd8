{{/*
Labels of every object: the selector labels of examples/kubernetes/ (kept exactly, so that a
release can take over objects applied with kustomize: a selector cannot change) and Helm's.
*/}}
{{- define "twisted-tunnel.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: twisted-tunnel
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{- define "twisted-tunnel.image" -}}
{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) | quote }}
{{- end }}

{{/* The edge nodes' labels (edgeNodeSelector), as a map in YAML. */}}
{{- define "twisted-tunnel.edgeLabels" -}}
{{- $preset := .Values.edgeNodeSelector.preset -}}
{{- if eq $preset "ack" -}}
alibabacloud.com/is-edge-worker: "true"
{{- else if eq $preset "openyurt" -}}
openyurt.io/is-edge-worker: "true"
{{- else -}}
{{- if not .Values.edgeNodeSelector.custom -}}
{{- fail "edgeNodeSelector.custom: name at least one label with preset custom" -}}
{{- end -}}
{{- range $key, $value := .Values.edgeNodeSelector.custom }}
{{ $key }}: {{ $value | quote }}
{{- end -}}
{{- end -}}
{{- end }}

{{/* The same as a label selector for --edge-node-selector: k=v,k=v */}}
{{- define "twisted-tunnel.edgeSelector" -}}
{{- $pairs := list -}}
{{- range $key, $value := (include "twisted-tunnel.edgeLabels" . | fromYaml) -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end }}

{{/* The server's replicas: one per node named in iptables mode. */}}
{{- define "twisted-tunnel.replicas" -}}
{{- if and .Values.server.iptables.enabled .Values.server.iptables.nodes -}}
{{- len .Values.server.iptables.nodes -}}
{{- else -}}
{{- .Values.server.replicas -}}
{{- end -}}
{{- end }}

{{/* "true" when the server talks to the Kubernetes API (and so has an account and a token). */}}
{{- define "twisted-tunnel.api" -}}
{{- if or .Values.config.fromAPI .Values.server.watchNodes (eq .Values.agent.identity "csrBootstrap") -}}
true
{{- end -}}
{{- end }}

{{/* The listeners' interface: the host's loopback in iptables mode, the pod IP otherwise. */}}
{{- define "twisted-tunnel.proxyInterface" -}}
{{- if .Values.server.iptables.enabled -}}127.0.0.1{{- else -}}$(POD_IP){{- end -}}
{{- end }}

{{- define "twisted-tunnel.connectServerName" -}}
{{- .Values.server.connect.tlsServerName | default (printf "edge-tunnel-server-connect.%s.svc" .Release.Namespace) -}}
{{- end }}

{{/* Combinations the schema cannot refuse, each with one line that says what to do. */}}
{{- define "twisted-tunnel.validate" -}}
{{- if and .Values.edgeNodeSelector.custom (ne .Values.edgeNodeSelector.preset "custom") -}}
{{- fail (printf "edgeNodeSelector.custom is used only with preset custom (preset is %s)" .Values.edgeNodeSelector.preset) -}}
{{- end -}}
{{- if and .Values.server.iptables.enabled .Values.server.connect.enabled -}}
{{- fail "server.iptables.enabled and server.connect.enabled: choose one way for kube-apiserver to reach the nodes (DNAT on its hosts, or its egress selector)" -}}
{{- end -}}
{{- if and (ne .Values.agent.identity "tunnelCert") (not .Values.server.watchNodes) -}}
{{- fail (printf "agent.identity=%s needs server.watchNodes=true: its certificates carry no IP, the agents' Nodes prove them" .Values.agent.identity) -}}
{{- end -}}
{{- if and .Values.server.connect.enabled .Values.networkPolicy.enabled (not .Values.networkPolicy.apiServer) -}}
{{- fail "networkPolicy.apiServer: name kube-apiserver's addresses ([{ipBlock: {cidr: ...}}]) or selectors for the CONNECT door, or set networkPolicy.enabled=false" -}}
{{- end -}}
{{- if and .Values.server.pdb.enabled (eq (toString .Values.server.pdb.minAvailable) "<nil>") (eq (toString .Values.server.pdb.maxUnavailable) "<nil>") -}}
{{- fail "server.pdb: give minAvailable or maxUnavailable" -}}
{{- end -}}
{{- if and .Values.server.pdb.enabled (ne (toString .Values.server.pdb.minAvailable) "<nil>") (ne (toString .Values.server.pdb.maxUnavailable) "<nil>") -}}
{{- fail "server.pdb: give minAvailable or maxUnavailable, not both" -}}
{{- end -}}
{{- end }}

{{/*
kube-apiserver's EgressSelectorConfiguration for the CONNECT door (the form
tests/interop/world.py runs against a real kube-apiserver): the `cluster` egress (nodes, pods,
services, aggregated API servers) over HTTP CONNECT on TCP with mutual TLS.
*/}}
{{- define "twisted-tunnel.egressSelector" -}}
{{- $connect := .Values.server.connect -}}
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
  - name: cluster
    connection:
      proxyProtocol: HTTPConnect
      transport:
        tcp:
          url: https://{{ $connect.service.clusterIP | default "CLUSTER-IP" }}:{{ $connect.port }}
          tlsConfig:
            # the tunnel CA (ca.pem of the Secret {{ .Values.server.secrets.ca }}): it signs the door's certificate
            caBundle: {{ $connect.apiserver.caBundle }}
            # kube-apiserver's client certificate, of the CA the door trusts (--connect-ca)
            clientCert: {{ $connect.apiserver.clientCert }}
            clientKey: {{ $connect.apiserver.clientKey }}
            tlsServerName: {{ include "twisted-tunnel.connectServerName" . }}
{{- end }}
