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
{{/* Where a component's pods find their view of the caller tokens (their own token, the others'
digests): the operator's Secret for that component, a key of the operator's shared Secret, or the
chart's Secret for that component. Takes (list $ name); returns {"secret": ..., "key": ...} as JSON. */}}
{{- define "hubsync.componentCredentials" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $ct := $root.Values.callerTokens -}}
{{- $own := get ($ct.existingSecrets | default dict) $name -}}
{{- if $own -}}
{{- dict "secret" $own "key" $ct.key | toJson -}}
{{- else if $ct.existingSecret -}}
{{- dict "secret" $ct.existingSecret "key" (get $ct.componentKeys $name) | toJson -}}
{{- else -}}
{{- dict "secret" (printf "%s-credentials" (include "hubsync.objectName" .)) "key" "caller-tokens.json" | toJson -}}
{{- end -}}
{{- end -}}

{{/* Whether the chart creates the caller-token Secrets (no Secret of the operator's is given). */}}
{{- define "hubsync.createsCallerTokens" -}}
{{- if and (not .Values.callerTokens.existingSecret) (not .Values.callerTokens.existingSecrets) -}}true{{- end -}}
{{- end -}}

{{/* The Secret with a component's TLS certificate (tls.crt, tls.key, ca.crt), empty when TLS is
off. Takes (list $ name). */}}
{{- define "hubsync.tlsSecret" -}}
{{- $root := index . 0 -}}
{{- $tls := $root.Values.tls -}}
{{- $existing := get ($tls.existingSecrets | default dict) (index . 1) -}}
{{- if $existing -}}
{{- $existing -}}
{{- else if $tls.certManager.enabled -}}
{{- include "hubsync.objectName" . }}-tls
{{- end -}}
{{- end -}}

{{/* The chart-created Secret with every caller's token (mounted by no pod; the CLI's token is here). */}}
{{- define "hubsync.callerTokensSecret" -}}
{{- include "hubsync.objectName" (list . "caller-tokens") -}}
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

{{/* "true" when redis.url names a Redis Cluster (redis+cluster:// or rediss+cluster://). */}}
{{- define "hubsync.redisCluster" -}}
{{- if or (hasPrefix "redis+cluster://" .Values.redis.url) (hasPrefix "rediss+cluster://" .Values.redis.url) -}}true{{- end -}}
{{- end -}}

{{/* Fails rendering with a message naming the value to set. */}}
{{- define "hubsync.validate" -}}
{{- if and (not .Values.redis.url) (not .Values.redis.evaluation.enabled) (not .Values.redis.sentinel.enabled) -}}
{{- fail "redis: set redis.url (or redis.sentinel) to your Redis, or redis.evaluation.enabled=true for a throwaway one" -}}
{{- end -}}
{{- if and .Values.redis.sentinel.enabled (not .Values.redis.sentinel.sentinels) -}}
{{- fail "redis.sentinel.sentinels: list host:port of each sentinel" -}}
{{- end -}}
{{- if and .Values.redis.sentinel.enabled (include "hubsync.redisCluster" .) -}}
{{- fail "redis: a redis+cluster:// url and redis.sentinel exclude each other (Redis Cluster fails over by itself)" -}}
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
{{- if and .Values.keda.enabled (not .Values.keda.prometheus.serverAddress) -}}
{{- fail "keda.prometheus.serverAddress: KEDA scales mapper and writer on hubsync_queue_lag, read from this Prometheus" -}}
{{- end -}}
{{- if and .Values.publicIngress.enabled (not .Values.components.ingress.enabled) -}}
{{- fail "publicIngress needs components.ingress.enabled" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.issuerRef.name: the cert-manager Issuer (a CA issuer, so Secrets carry ca.crt) that signs the components' certificates" -}}
{{- end -}}
{{- if .Values.callerTokens.existingSecret -}}
{{- range $name := include "hubsync.componentNames" $ | fromJsonArray -}}
{{- if not (get $.Values.callerTokens.componentKeys $name) -}}
{{- fail (printf "callerTokens.componentKeys.%s: the key of callerTokens.existingSecret holding %s's view of the caller tokens" $name $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.callerTokens.existingSecrets (not .Values.callerTokens.existingSecret) -}}
{{- range $name := include "hubsync.componentNames" $ | fromJsonArray -}}
{{- if and (index $.Values.components $name).enabled (not (get $.Values.callerTokens.existingSecrets $name)) -}}
{{- fail (printf "callerTokens.existingSecrets.%s: each enabled component needs its own Secret (or set callerTokens.existingSecret with one key per component)" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tls.existingSecrets (not .Values.tls.certManager.enabled) -}}
{{- range $name := include "hubsync.componentNames" $ | fromJsonArray -}}
{{- if and (index $.Values.components $name).enabled (not (get $.Values.tls.existingSecrets $name)) -}}
{{- fail (printf "tls.existingSecrets.%s: every component needs a certificate once one has (a TLS server refuses plaintext clients), or enable tls.certManager for the others" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.environment "production" -}}
{{- include "hubsync.validateProduction" . -}}
{{- end -}}
{{- end -}}

{{/* What production refuses: every item of docs/security.md's production checklist. */}}
{{- define "hubsync.validateProduction" -}}
{{- $v := .Values -}}
{{- $enabled := list -}}
{{- range $name := include "hubsync.componentNames" $ | fromJsonArray -}}
{{- if (index $v.components $name).enabled -}}{{- $enabled = append $enabled $name -}}{{- end -}}
{{- end -}}
{{- if not $v.tls.mesh -}}
{{- range $name := $enabled -}}
{{- if not (include "hubsync.tlsSecret" (list $ $name)) -}}
{{- fail (printf "production: %s has no TLS certificate; set tls.certManager.enabled=true (with tls.certManager.issuerRef), or tls.existingSecrets.%s, or tls.mesh=true if a service mesh encrypts and authenticates every hop" $name $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $v.redis.tlsByMesh -}}
{{- if $v.redis.evaluation.enabled -}}
{{- fail "production: the evaluation Redis has no TLS; point redis.url (rediss://) or redis.sentinel at your Redis" -}}
{{- end -}}
{{- if not (or (hasPrefix "rediss://" $v.redis.url) (hasPrefix "rediss+cluster://" $v.redis.url)) -}}
{{- fail "production: redis.url must be rediss:// or rediss+cluster:// (TLS; with Sentinel too: rediss://<any>/<db>), or set redis.tlsByMesh=true if a service mesh encrypts the hop" -}}
{{- end -}}
{{- end -}}
{{- if not (include "hubsync.redisPasswordSet" .) -}}
{{- fail "production: Redis needs AUTH; set redis.password.existingSecret (or redis.password.value)" -}}
{{- end -}}
{{- if not $v.networkPolicy.enabled -}}
{{- fail "production: networkPolicy.enabled must stay true (gRPC ports and Redis only from the components that call them)" -}}
{{- end -}}
{{- end -}}
