{{/*
Shared helpers, defined once in this library chart (type: library: it renders nothing).
The umbrella and every component subchart list it under `dependencies` (repository
file://../cryptex-lib); each subchart reaches it through the symlink charts/cryptex-lib, so
every subchart still lints and renders on its own, and `helm package` stores the contents.
*/}}

{{/* The chart's name. */}}
{{- define "cryptex.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
<release>-<chart>, or just <release> when both are equal. Cut to 63 characters because
Service names are DNS-1123 labels. The umbrella builds the same names for its Ingress with
"cryptex.componentName".
*/}}
{{- define "cryptex.fullname" -}}
{{- include "cryptex.componentName" (dict "release" .Release.Name "name" .Chart.Name) -}}
{{- end -}}

{{- define "cryptex.componentName" -}}
{{- if eq .release .name -}}
{{- .release | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .release .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels: stable across upgrades (no chart version). */}}
{{- define "cryptex.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cryptex.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cryptex.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cryptex.selectorLabels" . }}
app.kubernetes.io/component: {{ .Chart.Name }}
app.kubernetes.io/part-of: cryptex
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* registry/repository:tag (or @digest); the registry and tag default to global values. */}}
{{- define "cryptex.image" -}}
{{- $g := (.Values.global | default dict).image | default dict -}}
{{- $registry := .Values.image.registry | default $g.registry | default "" -}}
{{- $tag := .Values.image.tag | default $g.tag | default .Chart.AppVersion -}}
{{- $repo := ternary (printf "%s/%s" $registry .Values.image.repository) .Values.image.repository (ne $registry "") -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* The Secret with CRYPTEX_REDIS_URL and CRYPTEX_DATABASE_URL (made by the umbrella). */}}
{{- define "cryptex.connectionsSecret" -}}
{{- $g := .Values.global | default dict -}}
{{- $g.existingSecret | default (printf "%s-connections" .Release.Name) -}}
{{- end -}}

{{- define "cryptex.logLevel" -}}
{{- .Values.logLevel | default ((.Values.global | default dict).logLevel) | default "INFO" -}}
{{- end -}}

{{- define "cryptex.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* global.readOnlyRootFilesystem=false only for Tilt's live_update (values-dev.yaml). */}}
{{- define "cryptex.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ ternary false true (eq ((.Values.global | default dict).readOnlyRootFilesystem | toString) "false") }}
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Probes on a named port: /healthz (alive) and /readyz (warm, dependencies answer). */}}
{{- define "cryptex.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ . }}}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: {{ . }}}
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: {{ . }}}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 3
{{- end -}}

{{/* A ServiceMonitor for the chart's Service, only where the Prometheus Operator is. */}}
{{- define "cryptex.serviceMonitor" -}}
{{- if and .Values.metrics.serviceMonitor.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor") }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "cryptex.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "cryptex.labels" . | nindent 4 }}
    {{- with .Values.metrics.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "cryptex.selectorLabels" . | nindent 6 }}
  namespaceSelector:
    matchNames: [{{ .Release.Namespace }}]
  endpoints:
    - port: {{ .Values.metrics.portName }}
      path: /metrics
      interval: {{ .Values.metrics.serviceMonitor.interval }}
      scrapeTimeout: {{ .Values.metrics.serviceMonitor.scrapeTimeout }}
{{- end }}
{{- end -}}
