{{/*
Names, labels, the merged component config, images and secret names.
*/}}

{{- define "hubsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hubsync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<suffix>, e.g. the writer's Deployment. Takes (list $ "writer"). */}}
{{- define "hubsync.objectName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "hubsync.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hubsync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "hubsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hubsync
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component. Takes (list $ "writer"). */}}
{{- define "hubsync.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "hubsync.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one component's objects. Takes (list $ "writer"). */}}
{{- define "hubsync.componentLabels" -}}
{{ include "hubsync.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/*
Deep merge of `src` into `dst` (both maps; `dst` is modified). Unlike sprig's mergeOverwrite it
lets a component set `false`, `0` or "" over a default. Lists are replaced, not appended.
*/}}
{{- define "hubsync.mergeInto" -}}
{{- $dst := .dst -}}
{{- range $key, $value := .src -}}
{{- $current := get $dst $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- include "hubsync.mergeInto" (dict "dst" $current "src" $value) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* `default` merged with components.<name>, as JSON. Takes (list $ "writer"). */}}
{{- define "hubsync.componentConfig" -}}
{{- $root := index . 0 -}}
{{- $config := deepCopy $root.Values.default -}}
{{- include "hubsync.mergeInto" (dict "dst" $config "src" (deepCopy (index $root.Values.components (index . 1)))) -}}
{{- toJson $config -}}
{{- end -}}

{{- define "hubsync.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* gRPC address of a service inside the cluster. Takes (list $ "writer"). */}}
{{- define "hubsync.address" -}}
{{- $root := index . 0 -}}
{{- printf "%s-grpc.%s.svc:%d" (include "hubsync.objectName" .) $root.Release.Namespace (int $root.Values.ports.grpc) -}}
{{- end -}}

{{- define "hubsync.serviceAccountName" -}}
{{- $root := index . 0 -}}
{{- $config := index . 2 -}}
{{- if $config.serviceAccount.create -}}
{{- default (include "hubsync.objectName" (list $root (index . 1))) $config.serviceAccount.name -}}
{{- else -}}
{{- default "default" $config.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Secret names: the operator's existing Secret or the one the chart creates. */}}
{{/* The credentials a component's pods mount: with chart-created tokens, its own Secret (its
token, the others' digests); with callerTokens.existingSecret, that Secret. Takes (list $ name). */}}
{{- define "hubsync.componentCredentialsSecret" -}}
{{- $root := index . 0 -}}
{{- if $root.Values.callerTokens.existingSecret -}}
{{- $root.Values.callerTokens.existingSecret -}}
{{- else -}}
{{- include "hubsync.objectName" . }}-credentials
{{- end -}}
{{- end -}}

{{- define "hubsync.callerTokensSecret" -}}
{{- default (include "hubsync.objectName" (list . "caller-tokens")) .Values.callerTokens.existingSecret -}}
{{- end -}}
{{- define "hubsync.oauthSecret" -}}
{{- default (include "hubsync.objectName" (list . "oauth")) .Values.auth.oauth.existingSecret -}}
{{- end -}}
{{- define "hubsync.keyringSecret" -}}
{{- default (include "hubsync.objectName" (list . "keyring")) .Values.auth.keyring.existingSecret -}}
{{- end -}}
{{- define "hubsync.webhookSecret" -}}
{{- default (include "hubsync.objectName" (list . "webhook-secrets")) .Values.ingress.webhookSecrets.existingSecret -}}
{{- end -}}
{{- define "hubsync.redisSecret" -}}
{{- default (include "hubsync.objectName" (list . "redis")) .Values.redis.password.existingSecret -}}
{{- end -}}
{{- define "hubsync.redisSecretKey" -}}
{{- if .Values.redis.password.existingSecret -}}{{ .Values.redis.password.existingSecretKey }}{{- else -}}redis-password{{- end -}}
{{- end -}}
{{- define "hubsync.redisPasswordSet" -}}
{{- if or .Values.redis.password.existingSecret .Values.redis.password.value -}}true{{- end -}}
{{- end -}}
{{- define "hubsync.oauthSet" -}}
{{- if or .Values.auth.oauth.existingSecret .Values.auth.oauth.clientId -}}true{{- end -}}
{{- end -}}
{{- define "hubsync.mappingsConfigMap" -}}
{{- default (include "hubsync.objectName" (list . "mappings")) .Values.mapper.mappings.existingConfigMap -}}
{{- end -}}

{{/* The Redis URL services use: the external one or the evaluation StatefulSet's Service (empty with
Sentinel and no URL: the master comes from the sentinels). */}}
{{- define "hubsync.redisUrl" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if .Values.redis.evaluation.enabled -}}
{{- printf "redis://%s.%s.svc:6379/0" (include "hubsync.objectName" (list . "redis")) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Fails rendering with a message naming the value to set. */}}
{{- define "hubsync.validate" -}}
{{- if and (not .Values.redis.url) (not .Values.redis.evaluation.enabled) (not .Values.redis.sentinel.enabled) -}}
{{- fail "redis: set redis.url (or redis.sentinel) to your Redis, or redis.evaluation.enabled=true for a throwaway one" -}}
{{- end -}}
{{- if and .Values.redis.sentinel.enabled (not .Values.redis.sentinel.sentinels) -}}
{{- fail "redis.sentinel.sentinels: list host:port of each sentinel" -}}
{{- end -}}
{{- if and .Values.components.auth.enabled (not .Values.auth.keyring.existingSecret) (not .Values.auth.keyring.keys) -}}
{{- fail "auth.keyring: set existingSecret, or active + keys (see docs/operations.md, rotating the encryption key)" -}}
{{- end -}}
{{- if and (not .Values.auth.keyring.existingSecret) .Values.auth.keyring.keys (not (hasKey .Values.auth.keyring.keys .Values.auth.keyring.active)) -}}
{{- fail "auth.keyring.active must name one of auth.keyring.keys" -}}
{{- end -}}
{{- if and .Values.components.ingress.enabled (not .Values.ingress.webhookSecrets.existingSecret) (not .Values.ingress.webhookSecrets.secrets) -}}
{{- fail "ingress.webhookSecrets: set existingSecret, or secrets (your HubSpot app's client secret)" -}}
{{- end -}}
{{- if and (eq .Values.environment "production") .Values.components.ingress.enabled (not .Values.ingress.publicBaseUrl) -}}
{{- fail "ingress.publicBaseUrl: the public https URL HubSpot calls (webhook signatures cover it)" -}}
{{- end -}}
{{- if .Values.keda.enabled -}}
{{- range $name := list "mapper" "writer" -}}
{{- $component := index $.Values.components $name -}}
{{- if and $component.enabled $component.autoscaling.enabled -}}
{{- range $component.autoscaling.streams -}}
{{- if contains "<portal>" .stream -}}
{{- fail (printf "components.%s.autoscaling.streams: replace <portal> in %q with your portal id (one entry per portal)" $name .stream) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.publicIngress.enabled (not .Values.components.ingress.enabled) -}}
{{- fail "publicIngress needs components.ingress.enabled" -}}
{{- end -}}
{{- end -}}
