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
{{- if and .Values.edge.httpRoute.enabled (not .Values.edge.httpRoute.parentRefs) }}
{{- fail "edge.httpRoute.parentRefs: name the Gateway the route attaches to" }}
{{- end }}
{{- end }}
