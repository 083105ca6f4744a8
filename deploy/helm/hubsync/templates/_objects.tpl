{{/*
The objects of one component. Every template takes (dict "root" $ "name" "<component>" "c" <config> "spec" <spec>)
where <config> is `default` merged with components.<component> (hubsync.componentConfig) and
<spec> the component's entry of hubsync.componentTable (_components.tpl): what differs between
components comes from those two, not from the component's name.
components.yaml loops over the components and calls these.
*/}}

{{/* "hpa", "keda" or "" : how the component scales. */}}
{{- define "hubsync.scaler" -}}
{{- if .c.autoscaling.enabled -}}
{{- if and .spec.queue .root.Values.keda.enabled -}}keda{{- else -}}hpa{{- end -}}
{{- end -}}
{{- end -}}

{{- define "hubsync.deployment" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $c := .c -}}
{{- $ports := $root.Values.ports -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "hubsync.objectName" (list $root $name) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "hubsync.componentLabels" (list $root $name) | nindent 4 }}
spec:
  {{- if not (include "hubsync.scaler" .) }}
  replicas: {{ $c.replicas | int }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  selector:
    matchLabels:
      {{- include "hubsync.selectorLabels" (list $root $name) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "hubsync.componentLabels" (list $root $name) | nindent 8 }}
        {{- with $c.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Secrets created from values: a change rolls the pods (files are read at start-up).
        checksum/secrets: {{ toJson (list $root.Values.callerTokens $root.Values.auth $root.Values.ingress.webhookSecrets $root.Values.redis.password) | sha256sum }}
        {{- range $volume := .spec.volumes }}
        {{- with $volume.checksum }}
        checksum/{{ $volume.name }}: {{ include "hubsync.valueAt" (list $root .) | sha256sum }}
        {{- end }}
        {{- end }}
        {{- with $c.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "hubsync.serviceAccountName" (list $root $name $c) }}
      # No service needs the Kubernetes API.
      automountServiceAccountToken: false
      enableServiceLinks: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds | int }}
      securityContext:
        {{- toYaml $c.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ $name }}
          image: {{ include "hubsync.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["python", "-m", "hubsync.{{ $name }}"]
          ports:
            - name: grpc
              containerPort: {{ $ports.grpc | int }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $ports.metrics | int }}
              protocol: TCP
            - name: health
              containerPort: {{ $ports.health | int }}
              protocol: TCP
            {{- if .spec.http }}
            - name: http
              containerPort: {{ $ports.http | int }}
              protocol: TCP
            {{- end }}
          env:
            {{- include "hubsync.env" . | nindent 12 }}
          # The kubelet's gRPC probes speak plaintext: they ask the health-only port, so the API
          # port can require mutual TLS.
          startupProbe:
            grpc:
              port: {{ $ports.health | int }}
            {{- toYaml $c.probes.startup | nindent 12 }}
          readinessProbe:
            grpc:
              port: {{ $ports.health | int }}
            {{- toYaml $c.probes.readiness | nindent 12 }}
          livenessProbe:
            # the process answers, whatever Redis does (readiness follows Redis)
            grpc:
              port: {{ $ports.health | int }}
              service: hubsync.liveness
            {{- toYaml $c.probes.liveness | nindent 12 }}
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          securityContext:
            {{- toYaml $c.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: caller-tokens
              mountPath: /etc/hubsync/callers
              readOnly: true
            {{- if include "hubsync.tlsSecret" (list $root $name) }}
            - name: tls
              mountPath: /etc/hubsync/tls
              readOnly: true
            {{- end }}
            {{- if $root.Values.redis.tls.existingSecret }}
            - name: redis-tls
              mountPath: /etc/hubsync/redis-tls
              readOnly: true
            {{- end }}
            {{- range $volume := .spec.volumes }}
            - name: {{ $volume.name }}
              mountPath: {{ $volume.mountPath }}
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $c.tmpSizeLimit }}
        # This component's view only: its own token, the other callers' digests.
        {{- $credentials := include "hubsync.componentCredentials" (list $root $name) | fromJson }}
        - name: caller-tokens
          secret:
            secretName: {{ $credentials.secret }}
            items:
              - key: {{ $credentials.key }}
                path: caller-tokens.json
        {{- with include "hubsync.tlsSecret" (list $root $name) }}
        - name: tls
          secret:
            secretName: {{ . }}
            items:
              - {key: tls.crt, path: tls.crt}
              - {key: tls.key, path: tls.key}
              - {key: ca.crt, path: ca.crt}
        {{- end }}
        {{- with $root.Values.redis.tls }}
        {{- if .existingSecret }}
        - name: redis-tls
          secret:
            secretName: {{ .existingSecret }}
            items:
              {{- range $key := list .caKey .certKey .keyKey }}
              {{- if $key }}
              - {key: {{ $key }}, path: {{ $key }}}
              {{- end }}
              {{- end }}
        {{- end }}
        {{- end }}
        {{- range $volume := .spec.volumes }}
        - name: {{ $volume.name }}
          {{- if $volume.secret }}
          secret:
            secretName: {{ include $volume.secret $root }}
            items:
              - key: {{ $volume.key }}
                path: {{ $volume.key }}
          {{- else }}
          configMap:
            name: {{ include $volume.configMap $root }}
          {{- end }}
        {{- end }}
      {{- $anti := dict -}}
      {{- $selector := dict "matchLabels" (fromYaml (include "hubsync.selectorLabels" (list $root $name))) -}}
      {{- if eq $c.podAntiAffinity "hard" -}}
      {{- $_ := set $anti "requiredDuringSchedulingIgnoredDuringExecution" (list (dict "labelSelector" $selector "topologyKey" "kubernetes.io/hostname")) -}}
      {{- else if eq $c.podAntiAffinity "soft" -}}
      {{- $_ := set $anti "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" (dict "labelSelector" $selector "topologyKey" "kubernetes.io/hostname"))) -}}
      {{- end -}}
      {{- $affinity := deepCopy $c.affinity -}}
      {{- if $anti -}}
      {{- $_ := set $affinity "podAntiAffinity" (merge (get $affinity "podAntiAffinity" | default dict) $anti) -}}
      {{- end -}}
      {{- with $affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $c.topologySpread.enabled }}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: {{ $c.topologySpread.topologyKey }}
          whenUnsatisfiable: {{ $c.topologySpread.whenUnsatisfiable }}
          labelSelector:
            {{- toYaml $selector | nindent 12 }}
      {{- end }}
      {{- with $c.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* Environment of one component's container (the variables the services read). */}}
{{- define "hubsync.env" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $v := $root.Values -}}
- name: HUBSYNC_ENVIRONMENT
  value: {{ $v.environment | quote }}
- name: HUBSYNC_LOG_LEVEL
  value: {{ $v.logLevel | quote }}
- name: HUBSYNC_CALLER_NAME
  value: {{ $name | quote }}
- name: HUBSYNC_CALLER_TOKENS_FILE
  value: /etc/hubsync/callers/caller-tokens.json
- name: HUBSYNC_GRPC_HOST
  value: "0.0.0.0"
- name: HUBSYNC_GRPC_PORT
  value: {{ $v.ports.grpc | int | quote }}
- name: HUBSYNC_METRICS_PORT
  value: {{ $v.ports.metrics | int | quote }}
- name: HUBSYNC_GRPC_HEALTH_PORT
  value: {{ $v.ports.health | int | quote }}
{{- if include "hubsync.tlsSecret" (list $root $name) }}
- name: HUBSYNC_TLS_CERT_FILE
  value: /etc/hubsync/tls/tls.crt
- name: HUBSYNC_TLS_KEY_FILE
  value: /etc/hubsync/tls/tls.key
- name: HUBSYNC_TLS_CA_FILE
  value: /etc/hubsync/tls/ca.crt
{{- end }}
{{- if $v.tls.mesh }}
- name: HUBSYNC_GRPC_TLS_BY_MESH
  value: "true"
{{- end }}
{{- if $v.redis.tlsByMesh }}
- name: HUBSYNC_REDIS_TLS_BY_MESH
  value: "true"
{{- end }}
{{- with $v.redis.tls }}
{{- if and .existingSecret .caKey }}
- name: HUBSYNC_REDIS_TLS_CA_FILE
  value: /etc/hubsync/redis-tls/{{ .caKey }}
{{- end }}
{{- if and .existingSecret .certKey .keyKey }}
- name: HUBSYNC_REDIS_TLS_CERT_FILE
  value: /etc/hubsync/redis-tls/{{ .certKey }}
- name: HUBSYNC_REDIS_TLS_KEY_FILE
  value: /etc/hubsync/redis-tls/{{ .keyKey }}
{{- end }}
{{- end }}
{{- range $peer := include "hubsync.componentNames" $root | fromJsonArray }}
- name: HUBSYNC_{{ upper $peer }}_ADDRESS
  value: {{ include "hubsync.address" (list $root $peer) | quote }}
{{- end }}
- name: HUBSYNC_HUBSPOT_API_BASE
  value: {{ $v.hubspot.apiBase | quote }}
{{- with include "hubsync.redisUrl" $root }}
- name: HUBSYNC_REDIS_URL
  value: {{ . | quote }}
{{- end }}
{{- if $v.redis.sentinel.enabled }}
- name: HUBSYNC_REDIS_SENTINELS
  value: {{ join "," $v.redis.sentinel.sentinels | quote }}
- name: HUBSYNC_REDIS_SENTINEL_MASTER
  value: {{ $v.redis.sentinel.master | quote }}
{{- with $v.redis.sentinel.password }}
{{- if .existingSecret }}
- name: HUBSYNC_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .existingSecretKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if include "hubsync.redisPasswordSet" $root }}
- name: HUBSYNC_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "hubsync.redisSecret" $root }}
      key: {{ include "hubsync.redisSecretKey" $root }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: hubsync-{{ $name }}
{{- if $v.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $v.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $v.otel.protocol | quote }}
{{- end }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $v.otel.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $v.otel.samplerArg | quote }}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- $attributes := list "k8s.pod.name=$(K8S_POD_NAME)" (printf "k8s.namespace.name=%s" $root.Release.Namespace) (printf "service.version=%s" (default $root.Chart.AppVersion $v.image.tag)) }}
{{- range $key, $value := $v.otel.resourceAttributes }}
{{- $attributes = append $attributes (printf "%s=%v" $key $value) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attributes | quote }}
{{- include .spec.env . }}
{{- with .c.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}


{{/* The variables only one component reads (hubsync.componentTable's "env"). */}}
{{- define "hubsync.env.auth" }}
{{- $root := .root }}
{{- $v := .root.Values }}
{{- if include "hubsync.oauthSet" $root }}
- name: HUBSYNC_AUTH_CLIENT_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "hubsync.oauthSecret" $root }}
      key: client-id
- name: HUBSYNC_AUTH_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "hubsync.oauthSecret" $root }}
      key: client-secret
{{- end }}
{{- $redirect := $v.auth.oauth.redirectUri }}
{{- if and (not $redirect) $v.ingress.publicBaseUrl }}
{{- $redirect = printf "%s/oauth/callback" (trimSuffix "/" $v.ingress.publicBaseUrl) }}
{{- end }}
{{- with $redirect }}
- name: HUBSYNC_AUTH_REDIRECT_URI
  value: {{ . | quote }}
{{- end }}
- name: HUBSYNC_AUTH_SCOPES
  value: {{ $v.auth.oauth.scopes | quote }}
- name: HUBSYNC_AUTH_KEYRING_FILE
  value: /etc/hubsync/keyring/keyring.json
{{- end -}}

{{- define "hubsync.env.ingress" }}
{{- $v := .root.Values }}
- name: HUBSYNC_INGRESS_HTTP_HOST
  value: "0.0.0.0"
- name: HUBSYNC_INGRESS_HTTP_PORT
  value: {{ $v.ports.http | int | quote }}
{{- with $v.ingress.publicBaseUrl }}
- name: HUBSYNC_INGRESS_PUBLIC_BASE_URL
  value: {{ . | quote }}
{{- end }}
- name: HUBSYNC_INGRESS_WEBHOOK_SECRETS_FILE
  value: /etc/hubsync/webhook/webhook-secrets.json
{{- with $v.ingress.appId }}
- name: HUBSYNC_INGRESS_APP_ID
  value: {{ . | toString | quote }}
{{- end }}
- name: HUBSYNC_INGRESS_MAX_BODY_BYTES
  value: {{ $v.ingress.maxBodyBytes | int | quote }}
- name: HUBSYNC_INGRESS_WEBHOOK_SPANS
  value: {{ $v.ingress.webhookSpans | quote }}
{{- end -}}

{{- define "hubsync.env.mapper" }}
- name: HUBSYNC_MAPPER_MAPPINGS_DIR
  value: /etc/hubsync/mappings
{{- end -}}

{{- define "hubsync.env.writer" }}
{{- $v := .root.Values }}
- name: HUBSYNC_WRITER_RATE_LIMIT_PRESET
  value: {{ $v.writer.rateLimitPreset | quote }}
- name: HUBSYNC_WRITER_PILOT_MODE
  value: {{ $v.writer.pilotMode | toString | quote }}
- name: HUBSYNC_WRITER_BATCH_MAX_WAIT_MS
  value: {{ $v.writer.batchMaxWaitMs | int | quote }}
- name: HUBSYNC_WRITER_DAILY_RESET_TIMEZONE
  value: {{ $v.writer.dailyResetTimezone | quote }}
{{- end -}}

{{- define "hubsync.service" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $ports := $root.Values.ports -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "hubsync.objectName" (list $root $name) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "hubsync.componentLabels" (list $root $name) | nindent 4 }}
    hubsync.io/metrics: "true"
  {{- with .c.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ .c.service.type }}
  selector:
    {{- include "hubsync.selectorLabels" (list $root $name) | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $ports.grpc | int }}
      targetPort: grpc
      protocol: TCP
      {{- if not (include "hubsync.tlsSecret" (list $root $name)) }}
      # cleartext HTTP/2 (with mTLS the port speaks TLS: no appProtocol claims otherwise)
      appProtocol: kubernetes.io/h2c
      {{- end }}
    - name: metrics
      port: {{ $ports.metrics | int }}
      targetPort: metrics
      protocol: TCP
    {{- if .spec.http }}
    - name: http
      port: {{ $ports.http | int }}
      targetPort: http
      protocol: TCP
      appProtocol: http
    {{- end }}
{{- end -}}

{{- /* Headless: DNS answers every ready pod's IP, so the other components' gRPC clients
(round_robin) spread their calls over all replicas instead of pinning one HTTP/2 connection
to one pod. Servers end connections after grpcMaxConnectionAgeSeconds, so clients re-resolve
and reach pods added by the autoscaler. */ -}}
{{- define "hubsync.peerService" -}}
{{- $root := .root -}}
{{- $name := .name -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "hubsync.objectName" (list $root $name) }}-grpc
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "hubsync.componentLabels" (list $root $name) | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "hubsync.selectorLabels" (list $root $name) | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $root.Values.ports.grpc | int }}
      targetPort: grpc
      protocol: TCP
      {{- if not (include "hubsync.tlsSecret" (list $root $name)) }}
      appProtocol: kubernetes.io/h2c
      {{- end }}
{{- end -}}

{{- define "hubsync.serviceAccount" -}}
{{- if .c.serviceAccount.create -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "hubsync.serviceAccountName" (list .root .name .c) }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "hubsync.componentLabels" (list .root .name) | nindent 4 }}
  {{- with .c.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false
{{- end -}}
{{- end -}}

{{- define "hubsync.hpa" -}}
{{- $a := .c.autoscaling -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "hubsync.objectName" (list .root .name) }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "hubsync.componentLabels" (list .root .name) | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "hubsync.objectName" (list .root .name) }}
  minReplicas: {{ $a.minReplicas | int }}
  maxReplicas: {{ $a.maxReplicas | int }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $a.targetCPUUtilizationPercentage | int }}
    {{- if and $a.requests $a.requests.enabled }}
    # Webhook requests per pod, served by your custom-metrics adapter.
    - type: Pods
      pods:
        metric:
          name: {{ $a.requests.metricName }}
        target:
          type: AverageValue
          averageValue: {{ $a.requests.averageValue | quote }}
    {{- end }}
  {{- with $a.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "hubsync.scaledObject" -}}
{{- $root := .root -}}
{{- $a := .c.autoscaling -}}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ include "hubsync.objectName" (list $root .name) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "hubsync.componentLabels" (list $root .name) | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "hubsync.objectName" (list $root .name) }}
  pollingInterval: {{ $root.Values.keda.pollingInterval | int }}
  cooldownPeriod: {{ $root.Values.keda.cooldownPeriod | int }}
  minReplicaCount: {{ $a.minReplicas | int }}
  maxReplicaCount: {{ $a.maxReplicas | int }}
  {{- with $a.behavior }}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        {{- toYaml . | nindent 8 }}
  {{- end }}
  triggers:
    # One aggregate signal: each replica exports the lag of the ready shards it leases, the sum
    # is the queue's (docs/operations.md, Scaling).
    - type: prometheus
      metadata:
        serverAddress: {{ $root.Values.keda.prometheus.serverAddress | quote }}
        query: {{ printf "sum(hubsync_queue_lag{namespace=%q, queue=%q})" $root.Release.Namespace .spec.queue | quote }}
        threshold: {{ $a.lagPerReplica | int | quote }}
{{ end -}}

{{- define "hubsync.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "hubsync.objectName" (list .root .name) }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "hubsync.componentLabels" (list .root .name) | nindent 4 }}
spec:
  {{- if hasKey .c.pdb "minAvailable" }}
  minAvailable: {{ .c.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .c.pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "hubsync.selectorLabels" (list .root .name) | nindent 6 }}
{{- end -}}

{{/* A podSelector for some components of this release. Takes (dict "root" $ "components" (list ...)). */}}
{{- define "hubsync.componentsSelector" -}}
podSelector:
  matchLabels:
    app.kubernetes.io/name: {{ include "hubsync.name" .root }}
    app.kubernetes.io/instance: {{ .root.Release.Name }}
  matchExpressions:
    - key: app.kubernetes.io/component
      operator: In
      values: {{ toJson .components }}
{{- end -}}

{{- define "hubsync.networkPolicy" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $v := $root.Values -}}
{{- $np := $v.networkPolicy -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "hubsync.objectName" (list $root $name) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "hubsync.componentLabels" (list $root $name) | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "hubsync.selectorLabels" (list $root $name) | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    {{- $table := include "hubsync.componentTable" $root | fromJsonArray }}
    {{- $callers := list }}
    {{- range $caller := $table }}
    {{- if or (has $name $caller.calls) (eq $caller.name $np.cliComponent) }}
    {{- $callers = append $callers $caller.name }}
    {{- end }}
    {{- end }}
    {{- if $callers }}
    # The components that call this one over gRPC (and the CLI's pods, networkPolicy.cliComponent).
    - from:
        - {{- include "hubsync.componentsSelector" (dict "root" $root "components" $callers) | nindent 10 }}
      ports:
        - port: grpc
    {{- end }}
    {{- if and .spec.apiClients $np.clients }}
    # Internal services calling the gRPC API (they still present a caller token).
    - from:
        {{- toYaml $np.clients | nindent 8 }}
      ports:
        - port: grpc
    {{- end }}
    # Prometheus scraping /metrics.
    - from:
        - namespaceSelector:
            {{- toYaml $np.prometheus.namespaceSelector | nindent 12 }}
          podSelector:
            {{- toYaml $np.prometheus.podSelector | nindent 12 }}
      ports:
        - port: metrics
    {{- if .spec.http }}
    # Outside traffic (HubSpot webhooks, OAuth redirects): from anywhere, or from the ingress
    # controller when networkPolicy.ingressController names it.
    - {{- if or $np.ingressController.namespaceSelector $np.ingressController.podSelector }}
      from:
        - namespaceSelector:
            {{- toYaml $np.ingressController.namespaceSelector | nindent 12 }}
          podSelector:
            {{- toYaml $np.ingressController.podSelector | nindent 12 }}
      {{- end }}
      ports:
        - port: http
    {{- end }}
  egress:
    - to:
        - namespaceSelector:
            {{- toYaml $np.dns.namespaceSelector | nindent 12 }}
          podSelector:
            {{- toYaml $np.dns.podSelector | nindent 12 }}
      ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
    {{- $callees := .spec.calls }}
    {{- if eq $name $np.cliComponent }}
    {{- $callees = include "hubsync.componentNames" $root | fromJsonArray }}
    {{- end }}
    {{- if $callees }}
    # The components this one calls over gRPC (all of them from the CLI's pods).
    - to:
        - {{- include "hubsync.componentsSelector" (dict "root" $root "components" $callees) | nindent 10 }}
      ports:
        - port: {{ $v.ports.grpc | int }}
    {{- end }}
    # Redis.
    {{- if and $v.redis.evaluation.enabled (not $v.redis.url) (not $v.redis.sentinel.enabled) }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "hubsync.selectorLabels" (list $root "redis") | nindent 14 }}
      ports:
        - port: 6379
    {{- else }}
    - {{- with $v.redis.networkPolicy.to }}
      to:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        {{- range $v.redis.networkPolicy.ports }}
        - port: {{ . | int }}
        {{- end }}
    {{- end }}
    {{- if $v.otel.endpoint }}
    # The OpenTelemetry collector.
    - {{- with $np.otelCollector }}
      to:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - port: {{ $v.otel.networkPolicyPort | int }}
    {{- end }}
    {{- if .spec.hubspotEgress }}
    # HubSpot's API: only auth and writer call it.
    - to:
        - ipBlock:
            cidr: {{ $v.hubspot.egress.cidr }}
            {{- with $v.hubspot.egress.except }}
            except:
              {{- toYaml . | nindent 14 }}
            {{- end }}
      ports:
        {{- range $v.hubspot.egress.ports }}
        - port: {{ . | int }}
          protocol: TCP
        {{- end }}
    {{- end }}
{{- end -}}
