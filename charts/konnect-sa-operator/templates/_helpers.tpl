{{/* Chart name. */}}
{{- define "konnect-sa-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: the release name when it already contains the chart name. */}}
{{- define "konnect-sa-operator.fullname" -}}
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

{{- define "konnect-sa-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "konnect-sa-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "konnect-sa-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "konnect-sa-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "konnect-sa-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "konnect-sa-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret and key holding the operator's Konnect token. */}}
{{- define "konnect-sa-operator.tokenSecretName" -}}
{{- if .Values.konnect.token.value }}
{{- printf "%s-token" (include "konnect-sa-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- required "konnect.token.existingSecret or konnect.token.value is required" .Values.konnect.token.existingSecret }}
{{- end }}
{{- end }}

{{- define "konnect-sa-operator.tokenSecretKey" -}}
{{- if .Values.konnect.token.value }}token{{ else }}{{ default "token" .Values.konnect.token.existingSecretKey }}{{ end }}
{{- end }}

{{/*
What the operator needs in the namespaces it watches: the same rules as config/rbac/cluster_role.yaml and
src/api/rbac.rs (tests/install.rs compares them).
*/}}
{{- define "konnect-sa-operator.rules" -}}
rules:
  - apiGroups: ["konnect-sa.dev"]
    resources: ["systemaccounts", "systemaccounttokens", "rolebindings"]
    verbs: ["get", "list", "watch", "patch"]
  - apiGroups: ["konnect-sa.dev"]
    resources: ["systemaccounts/status", "systemaccounttokens/status", "rolebindings/status"]
    verbs: ["get", "update"]
  - apiGroups: ["konnect-sa.dev"]
    resources: ["systemaccounts/finalizers", "systemaccounttokens/finalizers", "rolebindings/finalizers"]
    verbs: ["update"]
  # Delete: only a token Secret the spec moved away from, once the token it holds is revoked.
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create"]
  # rolloutRestartTargets: the same patch as `kubectl rollout restart`.
  - apiGroups: ["apps"]
    resources: ["deployments", "statefulsets", "daemonsets"]
    verbs: ["patch"]
{{- end }}

{{/* Leader election: the operator gets, creates and updates one Lease. */}}
{{- define "konnect-sa-operator.leaderElectionRules" -}}
rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "create", "update"]
{{- end }}
