{{/*
Names, labels and the addresses every component derives from them. Peers,
advertise addresses, edges and membership Jobs all build node addresses here,
so a node's entry in --peers is byte-for-byte what it advertises (herald-node
refuses to start otherwise).
*/}}

{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name; short enough for "-node-headless". */}}
{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "herald.labels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- end }}

{{- define "herald.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "herald.authSecretName" -}}
{{- default (printf "%s-auth" (include "herald.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "herald.node.tlsSecretName" -}}
{{- default (printf "%s-node-tls" (include "herald.fullname" .)) .Values.node.quic.tls.existingSecret }}
{{- end }}

{{/* "true" when nodes and edges carry their own certificates (gRPC over TLS). */}}
{{- define "herald.tls.perNode" -}}
{{- if eq .Values.tls.mode "perNode" }}true{{ end }}
{{- end }}

{{/* The Secret laid out as `herald certs` writes (tls.mode perNode, no cert-manager). */}}
{{- define "herald.tls.certsSecretName" -}}
{{- default (printf "%s-certs" (include "herald.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/* cert-manager's Secret of node id. Call with (list $ id). */}}
{{- define "herald.tls.nodeSecretName" -}}
{{- printf "%s-node-%d-tls" (include "herald.fullname" (index . 0)) (index . 1 | int) }}
{{- end }}

{{- define "herald.tls.edgeSecretName" -}}
{{- printf "%s-edge-tls" (include "herald.fullname" .) }}
{{- end }}

{{/*
The node pods' certificate volume (tls.mode perNode): every node's files,
each under the directory named after its pod (<fullname>-node-<ordinal>/
ca.crt, tls.crt, tls.key with node id ordinal + 1). A StatefulSet has one
pod template, so the volume lists them all; the container mounts only its
own directory (subPathExpr $(POD_NAME)), and herald-node refuses a
certificate that names another id.
*/}}
{{- define "herald.tls.nodeVolume" -}}
- name: tls
{{- if .Values.tls.certManager.enabled }}
  projected:
    defaultMode: 0440
    sources:
      {{- range $i := until (.Values.node.replicas | int) }}
      {{- $pod := printf "%s-%d" (include "herald.node.fullname" $) $i }}
      - secret:
          name: {{ include "herald.tls.nodeSecretName" (list $ (add1 $i)) }}
          items:
            - key: ca.crt
              path: {{ $pod }}/ca.crt
            - key: tls.crt
              path: {{ $pod }}/tls.crt
            - key: tls.key
              path: {{ $pod }}/tls.key
      {{- end }}
{{- else }}
  secret:
    secretName: {{ include "herald.tls.certsSecretName" . }}
    defaultMode: 0440
    items:
      {{- range $i := until (.Values.node.replicas | int) }}
      {{- $pod := printf "%s-%d" (include "herald.node.fullname" $) $i }}
      - key: ca.pem
        path: {{ $pod }}/ca.crt
      - key: node-{{ add1 $i }}.pem
        path: {{ $pod }}/tls.crt
      - key: node-{{ add1 $i }}-key.pem
        path: {{ $pod }}/tls.key
      {{- end }}
{{- end }}
{{- end }}

{{/*
The edge certificate (ca.crt, tls.crt, tls.key), or with (list $ "ca") the
cluster CA alone (membership Jobs). Call with (list $ "edge"|"ca").
*/}}
{{- define "herald.tls.clientVolume" -}}
{{- $root := index . 0 }}
{{- $edge := eq (index . 1) "edge" -}}
- name: tls
  secret:
{{- if $root.Values.tls.certManager.enabled }}
    secretName: {{ include "herald.tls.edgeSecretName" $root }}
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
      {{- if $edge }}
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- end }}
{{- else }}
    secretName: {{ include "herald.tls.certsSecretName" $root }}
    defaultMode: 0440
    items:
      - key: ca.pem
        path: ca.crt
      {{- if $edge }}
      - key: edge.pem
        path: tls.crt
      - key: edge-key.pem
        path: tls.key
      {{- end }}
{{- end }}
{{- end }}

{{/* Node StatefulSet, its headless Service (peer DNS) and the client Service. */}}
{{- define "herald.node.fullname" -}}
{{- printf "%s-node" (include "herald.fullname" .) }}
{{- end }}

{{- define "herald.node.headless" -}}
{{- printf "%s-node-headless" (include "herald.fullname" .) }}
{{- end }}

{{- define "herald.node.policyConfigMap" -}}
{{- printf "%s-node-policy" (include "herald.fullname" .) }}
{{- end }}

{{/* DNS suffix of every node pod: <pod>.<this>. */}}
{{- define "herald.node.domain" -}}
{{- printf "%s.%s.svc.%s" (include "herald.node.headless" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* gRPC address of node id (ordinal + 1). Call with (list $ id). */}}
{{- define "herald.node.address" -}}
{{- $root := index . 0 }}
{{- $id := index . 1 | int }}
{{- printf "%s-%d.%s:%d" (include "herald.node.fullname" $root) (sub $id 1) (include "herald.node.domain" $root) ($root.Values.node.grpcPort | int) }}
{{- end }}

{{/* The client gRPC Service address (publishers, edges, membership Jobs). */}}
{{- define "herald.node.serviceAddress" -}}
{{- printf "%s.%s.svc.%s:%d" (include "herald.node.fullname" .) .Release.Namespace .Values.clusterDomain (.Values.node.grpcPort | int) }}
{{- end }}

{{/* --peers: every voter of the StatefulSet, id=address. */}}
{{- define "herald.node.peers" -}}
{{- $peers := list }}
{{- range $i := until (.Values.node.replicas | int) }}
{{- $peers = append $peers (printf "%d=%s" (add1 $i) (include "herald.node.address" (list $ (add1 $i)))) }}
{{- end }}
{{- join "," $peers }}
{{- end }}

{{/* Raft majority of the configured voters. */}}
{{- define "herald.node.majority" -}}
{{- add1 (div (.Values.node.replicas | int) 2) }}
{{- end }}

{{/*
The node count before this release: node.membership.previousReplicas when
set, otherwise the running StatefulSet's spec.replicas (lookup only answers
during a real install or upgrade), otherwise the new count (a fresh install
bootstraps every voter itself).
*/}}
{{- define "herald.node.previousReplicas" -}}
{{- if not (kindIs "invalid" .Values.node.membership.previousReplicas) }}
{{- .Values.node.membership.previousReplicas | int }}
{{- else }}
{{- $sts := lookup "apps/v1" "StatefulSet" .Release.Namespace (include "herald.node.fullname" .) }}
{{- if and $sts $sts.spec }}
{{- $sts.spec.replicas | default 1 | int }}
{{- else }}
{{- .Values.node.replicas | int }}
{{- end }}
{{- end }}
{{- end }}

{{- define "herald.edge.fullname" -}}
{{- printf "%s-edge" (include "herald.fullname" .) }}
{{- end }}

{{/* Labels of the pods of one component. Call with (list $ "node"). */}}
{{- define "herald.componentSelector" -}}
{{ include "herald.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Pod security settings shared by every pod. */}}
{{- define "herald.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "herald.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* One environment variable read from the auth Secret. Call with (list $ NAME key). */}}
{{- define "herald.secretEnv" -}}
{{- $root := index . 0 -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "herald.authSecretName" $root }}
      key: {{ index . 2 }}
{{- end }}

{{/*
Rules across values that the schema cannot state; herald-node would refuse
them at start-up, after the pods were already created.
*/}}
{{- define "herald.validate" -}}
{{- $raft := .Values.node.raft }}
{{- if le ($raft.electionTimeoutMs | int) (mul 2 ($raft.heartbeatMs | int)) }}
{{- fail (printf "node.raft.electionTimeoutMs (%v) must be more than twice node.raft.heartbeatMs (%v)" $raft.electionTimeoutMs $raft.heartbeatMs) }}
{{- end }}
{{- if eq (.Values.node.grpcPort | int) (.Values.node.httpPort | int) }}
{{- fail "node.grpcPort and node.httpPort must differ" }}
{{- end }}
{{- if and .Values.node.quic.enabled (eq (.Values.node.quic.port | int) (.Values.node.httpPort | int)) }}
{{- fail "node.quic.port and node.httpPort must differ (one is UDP, but the schema of a pod's ports keeps names and numbers apart)" }}
{{- end }}
{{- if and .Values.edge.enabled (eq (.Values.edge.port | int) (.Values.edge.httpPort | int)) }}
{{- fail "edge.port and edge.httpPort must differ" }}
{{- end }}
{{- if gt (.Values.edge.autoscaling.minReplicas | int) (.Values.edge.autoscaling.maxReplicas | int) }}
{{- fail "edge.autoscaling.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (ne .Values.tls.mode "perNode") }}
{{- fail "tls.certManager.enabled issues per-node certificates: it needs tls.mode perNode" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.issuerRef.name: name the (CA) Issuer that signs the node and edge certificates" }}
{{- end }}
{{- if and .Values.tls.existingSecret .Values.tls.certManager.enabled }}
{{- fail "tls.existingSecret and tls.certManager.enabled exclude each other: the certificates come from one or the other" }}
{{- end }}
{{- if and .Values.edge.httpRoute.enabled (not .Values.edge.httpRoute.parentRefs) }}
{{- fail "edge.httpRoute.parentRefs: name the Gateway the route attaches to" }}
{{- end }}
{{- end }}
