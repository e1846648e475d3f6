{{/* The release's name for its objects: <release>-streamgate, or the release name when it says streamgate. */}}
{{- define "streamgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streamgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one role: (dict "root" $ "role" "core") */}}
{{- define "streamgate.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "streamgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "streamgate.linkTokenSecret" -}}
{{- default (printf "%s-link-token" (include "streamgate.fullname" .)) .Values.linkToken.existingSecret -}}
{{- end -}}

{{/* The core Service's address, which the bridges link to. */}}
{{- define "streamgate.coreAddress" -}}
{{- printf "%s-core:%v" (include "streamgate.fullname" .) .Values.core.grpcPort -}}
{{- end -}}

{{/* Environment both roles share. */}}
{{- define "streamgate.commonEnv" -}}
- name: STREAMGATE_LINK_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "streamgate.linkTokenSecret" . }}
      key: link-token
- name: STREAMGATE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: STREAMGATE_HOST
  value: "0.0.0.0"
{{- end -}}

{{/* Spread a role's pods over nodes when the scheduler can: (dict "root" $ "role" "core") */}}
{{- define "streamgate.topologySpread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "streamgate.selectorLabels" . | nindent 8 }}
{{- end -}}
