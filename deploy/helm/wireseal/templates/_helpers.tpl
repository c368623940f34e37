{{/* Labels on every object. */}}
{{- define "wireseal.labels" -}}
app.kubernetes.io/name: wireseal
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The image: the repository at the chart's appVersion unless a tag is set. */}}
{{- define "wireseal.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
