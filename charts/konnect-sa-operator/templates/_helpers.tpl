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

{{/* The Secret and key holding the operator's Konnect token (with the simulator: its admin token). */}}
{{- define "konnect-sa-operator.tokenSecretName" -}}
{{- if .Values.simulator.enabled }}
{{- include "konnect-sa-operator.simulatorSecretName" . }}
{{- else if .Values.konnect.token.value }}
{{- printf "%s-token" (include "konnect-sa-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- required "konnect.token.existingSecret or konnect.token.value is required" .Values.konnect.token.existingSecret }}
{{- end }}
{{- end }}

{{- define "konnect-sa-operator.tokenSecretKey" -}}
{{- if and .Values.simulator.enabled .Values.simulator.adminToken.existingSecret }}{{ default "token" .Values.simulator.adminToken.existingSecretKey }}
{{- else if .Values.simulator.enabled }}token
{{- else if .Values.konnect.token.value }}token{{ else }}{{ default "token" .Values.konnect.token.existingSecretKey }}{{ end }}
{{- end }}

{{- define "konnect-sa-operator.simulatorSecretName" -}}
{{- default (printf "%s-simulator" (include "konnect-sa-operator.fullname" .) | trunc 63 | trimSuffix "-") .Values.simulator.adminToken.existingSecret }}
{{- end }}

{{- define "konnect-sa-operator.simulatorSeedName" -}}
{{- default (printf "%s-simulator-seed" (include "konnect-sa-operator.fullname" .) | trunc 63 | trimSuffix "-") .Values.simulator.seedConfigMap }}
{{- end }}

{{/* The operator's Konnect URL: the simulator sidecar on loopback (plain http is accepted there only). */}}
{{- define "konnect-sa-operator.konnectUrl" -}}
{{- if .Values.simulator.enabled }}
{{- if .Values.konnect.token.selfManaged }}
{{- fail "simulator.enabled and konnect.token.selfManaged do not go together: the simulator's admin token is the operator's" }}
{{- end }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail "simulator.enabled needs replicaCount 1: each pod would have a simulated organisation of its own" }}
{{- end }}
{{- printf "http://127.0.0.1:%v" .Values.simulator.port }}
{{- else }}
{{- .Values.konnect.url }}
{{- end }}
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
