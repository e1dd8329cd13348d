{{/* Name of the chart, overridable. */}}
{{- define "deid-gateway.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects: <release>-<chart> unless overridden. */}}
{{- define "deid-gateway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "deid-gateway.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "deid-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/name: {{ include "deid-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of the gateway pods. */}}
{{- define "deid-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "deid-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* Selector labels of the GPU worker pods. */}}
{{- define "deid-gateway.workerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "deid-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end -}}

{{/* The image reference. */}}
{{- define "deid-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The Secret holding project.key. */}}
{{- define "deid-gateway.keySecret" -}}
{{- if .Values.projectKey.value -}}
{{- printf "%s-key" (include "deid-gateway.fullname" .) -}}
{{- else -}}
{{- .Values.projectKey.existingSecret -}}
{{- end -}}
{{- end -}}
