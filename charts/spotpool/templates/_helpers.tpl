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
{{- if .Values.credentialSources.secrets }}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end }}

{{/* The namespace of the leader-election Lease: leaderElection.namespace, else kube-system, which
every installation in the cluster shares whatever its release namespace. */}}
{{- define "spotpool.leaseNamespace" -}}
{{- .Values.leaderElection.namespace | default "kube-system" }}
{{- end }}

{{/* The name of the leader-election Lease, as the operator computes it from its flags
(spotpool.controller.leadership.lease_name; tests/chart/test_chart_render.py checks that both
agree): spotpool-leader, then, with operator.clusterId, a slug of the id (as the operator
sanitizes it) and a hash of it, then, with rbac.namespaces, "ns" and a hash of the sorted
namespaces. The default cluster id (the kube-system UID) is left out of the name, so the name is
known here without reading the cluster. */}}
{{- define "spotpool.leaseName" -}}
{{- $parts := list "spotpool-leader" }}
{{- $scope := .Values.rbac.namespaces | uniq | sortAlpha }}
{{- with .Values.operator.clusterId }}
{{- $id := regexReplaceAll "[^A-Za-z0-9._:/=+@-]" . "-" | trunc 63 }}
{{- $slug := regexReplaceAll "[^a-z0-9]+" (lower $id) "-" | trimAll "-" | trunc (ternary 22 36 (not (empty $scope))) | trimAll "-" }}
{{- if $slug }}
{{- $parts = append $parts $slug }}
{{- end }}
{{- $parts = append $parts (sha256sum $id | trunc 10) }}
{{- end }}
{{- if $scope }}
{{- $parts = append $parts "ns" }}
{{- $parts = append $parts (printf "namespaces\n%s" (join "\n" $scope) | sha256sum | trunc 10) }}
{{- end }}
{{- join "-" $parts }}
{{- end }}

{{/* The name of the metrics port (Deployment, Service, ServiceMonitor, NetworkPolicy): its scheme
first, as Istio and kube-prometheus name ports. */}}
{{- define "spotpool.metricsPortName" -}}
{{- ternary "https-metrics" "http-metrics" .Values.metrics.secure }}
{{- end }}

{{/* Where the metrics certificate Secret (metrics.certSecret) is mounted. */}}
{{- define "spotpool.metricsCertDir" -}}
/etc/spotpool/metrics-cert
{{- end }}
