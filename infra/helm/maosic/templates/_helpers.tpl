{{/* Names and labels shared by the templates. */}}
{{- define "maosic.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "maosic.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "maosic.selectorLabels" -}}
app.kubernetes.io/name: {{ include "maosic.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "maosic.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "maosic.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "maosic.labels" -}}
{{ include "maosic.commonLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "maosic.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The Secret holding MAOSIC_DATABASE and the keys: the user's, or the chart's. */}}
{{- define "maosic.secretName" -}}
{{- .Values.existingSecret | default (printf "%s-secrets" (include "maosic.fullname" .)) -}}
{{- end -}}

{{/* Environment every maosic-server container gets (serve and migrate). */}}
{{- define "maosic.env" -}}
- name: MAOSIC_LOG__FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: MAOSIC_MAX_CONNECTIONS
  value: {{ .Values.config.maxConnections | quote }}
{{- with .Values.config.otlpEndpoint }}
- name: MAOSIC_LOG__OTLP_ENDPOINT
  value: {{ . | quote }}
- name: MAOSIC_LOG__TRACE_SAMPLE_RATIO
  value: {{ $.Values.config.traceSampleRatio | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "maosic.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "maosic.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
