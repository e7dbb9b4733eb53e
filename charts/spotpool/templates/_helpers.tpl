{{/* The chart name, or nameOverride. */}}
{{- define "spotpool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name: fullnameOverride, the release name when it already
contains the chart name, else <release>-<chart>. */}}
{{- define "spotpool.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "spotpool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: name and instance only (selectors are immutable). */}}
{{- define "spotpool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spotpool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every resource except the helm test Pod. */}}
{{- define "spotpool.labels" -}}
helm.sh/chart: {{ include "spotpool.chart" . }}
{{ include "spotpool.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spotpool
{{- end }}

{{- define "spotpool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spotpool.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "spotpool.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The restricted Pod Security profile, for the operator and the helm test Pod. */}}
{{- define "spotpool.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "spotpool.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* What the operator does to SpotComputeEnvironments, Events and Secrets: granted cluster-wide
(ClusterRole) or per watched namespace (Role). */}}
{{- /* Each rule is proven necessary by tests/chart/test_rbac_proof.py: the operator fails without it.
     No "get": the operator reads its objects only through kopf's list and watch. */ -}}
{{- define "spotpool.namespacedRules" -}}
- apiGroups: [spotpool.io]
  resources: [spotcomputeenvironments]
  verbs: [list, watch, patch]
- apiGroups: [spotpool.io]
  resources: [spotcomputeenvironments/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, patch]
{{- end }}
