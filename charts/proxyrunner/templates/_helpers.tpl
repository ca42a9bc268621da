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

{{/* Where the chart mounts identity files in the proxy container. */}}
{{- define "proxyrunner.authzDir" -}}/etc/proxyrunner/authz{{- end }}
{{- define "proxyrunner.oidcCaDir" -}}/etc/proxyrunner/oidc-ca{{- end }}
{{- define "proxyrunner.oidcSecretDir" -}}/etc/proxyrunner/secrets/oidc-client{{- end }}
{{- define "proxyrunner.exchangeSecretDir" -}}/etc/proxyrunner/secrets/token-exchange{{- end }}
{{- define "proxyrunner.backendAuthDir" -}}/etc/proxyrunner/secrets/backend-auth{{- end }}
{{/* The variable backend_auth.value_env names (filled from backendAuth.secret). */}}
{{- define "proxyrunner.backendAuthEnv" -}}PROXYRUNNER_BACKEND_AUTH{{- end }}

{{/* Copy the set values named in pairs (value name, RunConfig name) from src to dst. */}}
{{- define "proxyrunner.copySet" -}}
{{- $src := index . 0 -}}{{- $dst := index . 1 -}}
{{- range $pair := index . 2 -}}
{{- $v := index $src (index $pair 0) -}}
{{- if $v -}}{{- $_ := set $dst (index $pair 1) $v -}}{{- end -}}
{{- end -}}
{{- end }}

{{/* The ToolHive authz config the chart renders from authz.policies. */}}
{{- define "proxyrunner.authzDocument" -}}
{{- $a := .Values.authz -}}
{{- $cedar := dict "policies" $a.policies "entities_json" ($a.entitiesJson | default "[]") -}}
{{- include "proxyrunner.copySet" (list $a $cedar (list (list "groupClaimName" "group_claim_name") (list "roleClaimName" "role_claim_name") (list "groupEntityType" "group_entity_type") (list "multiValuedClaims" "multi_valued_claims"))) -}}
{{- dict "version" "1.0" "type" "cedarv1" "cedar" $cedar | toPrettyJson -}}
{{- end }}

{{/* What the pod template's content depends on beyond the RunConfig: the Secret and
ConfigMap references and the policies, so that changing them rolls the pods. */}}
{{- define "proxyrunner.identityChecksum" -}}
{{- $refs := dict "oidc" (pick .Values.oidc "clientSecret" "caCert") "backendAuth" .Values.backendAuth "tokenExchange" (pick .Values.tokenExchange "clientSecret") "authz" (pick .Values.authz "existingConfigMap" "key") "telemetry" (pick .Values.telemetry "headersSecret") -}}
{{- if and .Values.authz.enabled (not .Values.authz.existingConfigMap) -}}
{{- $_ := set $refs "policies" (include "proxyrunner.authzDocument" .) -}}
{{- end -}}
{{- $refs | toJson | sha256sum -}}
{{- end }}

{{/* The RunConfig as the proxy reads it: values.runConfig plus the Redis and identity
fields. */}}
{{- define "proxyrunner.runConfig" -}}
{{- $rc := deepCopy .Values.runConfig -}}
{{- $_ := set $rc "host" "0.0.0.0" -}}
{{- if .Values.redis.enabled -}}
{{- $_ := set $rc "session_redis" (dict "address" .Values.redis.address "db" (int .Values.redis.db) "key_prefix" .Values.redis.keyPrefix) -}}
{{- end -}}
{{- with .Values.oidc -}}{{- if .enabled -}}
{{- $oc := dict "issuer" .issuer "resource_url" .resourceUrl -}}
{{- include "proxyrunner.copySet" (list . $oc (list (list "audience" "audience") (list "jwksUrl" "jwks_url") (list "introspectionUrl" "introspection_url") (list "clientId" "client_id") (list "scopes" "scopes") (list "requiredScopes" "required_scopes") (list "allowPrivateIp" "allow_private_ip"))) -}}
{{- if and .clientSecret.existingSecret .clientSecret.mountAsFile -}}
{{- $_ := set $oc "client_secret_file" (printf "%s/%s" (include "proxyrunner.oidcSecretDir" $) .clientSecret.key) -}}
{{- end -}}
{{- if .caCert.configMap -}}
{{- $_ := set $oc "ca_cert_path" (printf "%s/%s" (include "proxyrunner.oidcCaDir" $) .caCert.key) -}}
{{- end -}}
{{- $_ := set $rc "oidc_config" $oc -}}
{{- end -}}{{- end -}}
{{- with .Values.tokenExchange -}}{{- if .enabled -}}
{{- $tx := dict "token_url" .tokenUrl "client_id" .clientId "audience" .audience -}}
{{- include "proxyrunner.copySet" (list . $tx (list (list "scopes" "scopes") (list "subjectTokenType" "subject_token_type") (list "headerName" "header_name"))) -}}
{{- if .clientSecret.mountAsFile -}}
{{- $_ := set $tx "client_secret_file" (printf "%s/%s" (include "proxyrunner.exchangeSecretDir" $) .clientSecret.key) -}}
{{- end -}}
{{- $_ := set $rc "token_exchange_config" $tx -}}
{{- end -}}{{- end -}}
{{- with .Values.backendAuth -}}{{- if .enabled -}}
{{- $ba := dict "header" .header -}}
{{- if .mountAsFile -}}
{{- $_ := set $ba "value_file" (printf "%s/%s" (include "proxyrunner.backendAuthDir" $) .secret.key) -}}
{{- else -}}
{{- $_ := set $ba "value_env" (include "proxyrunner.backendAuthEnv" $) -}}
{{- end -}}
{{- $_ := set $rc "backend_auth" $ba -}}
{{- end -}}{{- end -}}
{{- if .Values.authz.enabled -}}
{{- $_ := set $rc "authz_config_path" (printf "%s/%s" (include "proxyrunner.authzDir" .) .Values.authz.key) -}}
{{- end -}}
{{- with .Values.audit -}}{{- if .enabled -}}
{{- $ac := dict -}}
{{- include "proxyrunner.copySet" (list . $ac (list (list "component" "component") (list "eventTypes" "event_types") (list "excludeEventTypes" "exclude_event_types") (list "includeRequestData" "include_request_data") (list "includeResponseData" "include_response_data") (list "maxDataSize" "max_data_size") (list "logFile" "log_file"))) -}}
{{- $_ := set $rc "audit_config" $ac -}}
{{- end -}}{{- end -}}
{{- if .Values.telemetry.enabled -}}
{{- $_ := set $rc "telemetry_config" (include "proxyrunner.telemetryConfig" . | fromJson) -}}
{{- end -}}
{{- $rc | toPrettyJson -}}
{{- end }}

{{/* The variable the OTLP headers come in, from telemetry.headersSecret. */}}
{{- define "proxyrunner.otlpHeadersEnv" -}}OTEL_EXPORTER_OTLP_HEADERS{{- end }}

{{/* A key of telemetry_config as Go's encoding/json matches it: any case, and our
snake_case spelling (sampling_rate is samplingRate). */}}
{{- define "proxyrunner.goKey" -}}{{- . | replace "_" "" | lower -}}{{- end }}

{{/* telemetry_config from the telemetry values (never headers: they come from
telemetry.headersSecret), with runConfig.telemetry_config laid over it key by key. */}}
{{- define "proxyrunner.telemetryConfig" -}}
{{- $t := .Values.telemetry -}}
{{- $tc := dict "endpoint" $t.endpoint "tracingEnabled" $t.tracingEnabled "metricsEnabled" $t.metricsEnabled "samplingRate" (toString $t.samplingRate) "insecure" $t.insecure -}}
{{- include "proxyrunner.copySet" (list $t $tc (list (list "serviceName" "serviceName") (list "serviceVersion" "serviceVersion") (list "metricExportInterval" "metricExportInterval") (list "maxQueueSize" "maxQueueSize") (list "customAttributes" "customAttributes") (list "environmentVariables" "environmentVariables"))) -}}
{{- range $key, $value := .Values.runConfig.telemetry_config | default dict -}}
{{- range $rendered := keys $tc -}}
{{- if eq (include "proxyrunner.goKey" $rendered) (include "proxyrunner.goKey" $key) -}}
{{- $_ := unset $tc $rendered -}}
{{- end -}}
{{- end -}}
{{- $_ := set $tc $key $value -}}
{{- end -}}
{{- $tc | toJson -}}
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
{{- range $field, $owner := dict "oidc_config" "oidc" "token_exchange_config" "tokenExchange" "backend_auth" "backendAuth" "authz_config_path" "authz" "audit_config" "audit" -}}
{{- if and (index $.Values $owner).enabled (hasKey $.Values.runConfig $field) -}}
{{- fail (printf "runConfig.%s is set while %s.enabled renders it; set it in one place" $field $owner) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.authz.enabled (hasKey .Values.runConfig "authz_config") -}}
{{- fail "runConfig.authz_config is set while authz.enabled renders authz_config_path; set the policies in one place" -}}
{{- end -}}
{{- with .Values.telemetry -}}{{- if and .enabled (not (or .tracingEnabled .metricsEnabled)) -}}
{{- fail "telemetry.enabled needs telemetry.tracingEnabled or telemetry.metricsEnabled: with neither, nothing is exported" -}}
{{- end -}}{{- end -}}
{{- if and .Values.tokenExchange.enabled (not .Values.oidc.enabled) -}}
{{- fail "tokenExchange.enabled needs oidc.enabled: the exchange trades the client's validated token" -}}
{{- end -}}
{{- if and .Values.tokenExchange.enabled .Values.backendAuth.enabled -}}
{{- fail "tokenExchange.enabled and backendAuth.enabled conflict: the backend gets one credential; choose one" -}}
{{- end -}}
{{- if .Values.authz.enabled -}}
{{- if and .Values.authz.policies .Values.authz.existingConfigMap -}}
{{- fail "authz.policies and authz.existingConfigMap are both set; the policies come from one ConfigMap" -}}
{{- end -}}
{{- if not (or .Values.authz.policies .Values.authz.existingConfigMap) -}}
{{- fail "authz.enabled needs authz.policies or authz.existingConfigMap" -}}
{{- end -}}
{{- end -}}
{{- end }}
