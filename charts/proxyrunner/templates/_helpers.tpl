{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "proxyrunner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "proxyrunner.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "proxyrunner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "proxyrunner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "proxyrunner.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "proxyrunner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "proxyrunner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "proxyrunner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Seconds of a duration written as "25s", "1m" or a number. */}}
{{- define "proxyrunner.seconds" -}}
{{- $d := toString . -}}
{{- if hasSuffix "ms" $d -}}{{ divf (trimSuffix "ms" $d | float64) 1000 }}
{{- else if hasSuffix "s" $d -}}{{ trimSuffix "s" $d | float64 }}
{{- else if hasSuffix "m" $d -}}{{ mulf (trimSuffix "m" $d | float64) 60 }}
{{- else if hasSuffix "h" $d -}}{{ mulf (trimSuffix "h" $d | float64) 3600 }}
{{- else -}}{{ $d | float64 }}{{- end -}}
{{- end }}

{{/* The RunConfig as the proxy reads it: values.runConfig plus the Redis fields. */}}
{{- define "proxyrunner.runConfig" -}}
{{- $rc := deepCopy .Values.runConfig -}}
{{- $_ := set $rc "host" "0.0.0.0" -}}
{{- if .Values.redis.enabled -}}
{{- $_ := set $rc "session_redis" (dict "address" .Values.redis.address "db" (int .Values.redis.db) "key_prefix" .Values.redis.keyPrefix) -}}
{{- end -}}
{{- $rc | toPrettyJson -}}
{{- end }}

{{/* Rendering fails on settings that would break a rollout or leak a secret. */}}
{{- define "proxyrunner.validate" -}}
{{- $grace := float64 .Values.terminationGracePeriodSeconds -}}
{{- $timeout := include "proxyrunner.seconds" (.Values.runConfig.drain_timeout | default "25s") | float64 -}}
{{- if le $grace $timeout -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be greater than runConfig.drain_timeout (%vs), or pods are killed mid-drain" $grace $timeout) -}}
{{- end -}}
{{- if hasKey (.Values.runConfig.session_redis | default dict) "password" -}}
{{- fail "runConfig.session_redis.password: never put a password in the RunConfig; use redis.passwordSecret" -}}
{{- end -}}
{{- if and .Values.redis.enabled (not .Values.redis.passwordSecret.name) -}}
{{- fail "redis.passwordSecret.name is required when redis.enabled is true" -}}
{{- end -}}
{{- end }}
