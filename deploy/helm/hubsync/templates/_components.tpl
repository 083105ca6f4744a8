{{/*
The components, in one place: what each one is and needs. Everything the templates do per
component comes from this table (values.yaml's components.<name> holds what an operator tunes;
this holds what the code needs, which values must not change). Fields:
  name           the service (python -m hubsync.<name>, app.kubernetes.io/component)
  calls          the components it calls over gRPC (its own channels; docs/security.md)
  apiClients     networkPolicy.clients may call its gRPC API
  hubspotEgress  it calls HubSpot's API (egress to hubspot.egress)
  http           it serves outside HTTP on ports.http (webhooks, OAuth redirects)
  queue          KEDA scales it on hubsync_queue_lag of this queue ("" : HPA only)
  env            the template adding its own environment variables
  volumes        its own files: name, mountPath, and a Secret (secret: the template naming it,
                 key: the file) or a ConfigMap (configMap: the template naming it; checksum: the
                 values path whose change rolls the pods)
*/}}
{{- define "hubsync.componentTable" -}}
[
  {"name": "auth", "calls": [], "apiClients": false, "hubspotEgress": true, "http": false, "queue": "",
   "env": "hubsync.env.auth",
   "volumes": [{"name": "keyring", "mountPath": "/etc/hubsync/keyring", "secret": "hubsync.keyringSecret", "key": "keyring.json"}]},
  {"name": "ingress", "calls": ["auth", "writer"], "apiClients": true, "hubspotEgress": false, "http": true, "queue": "",
   "env": "hubsync.env.ingress",
   "volumes": [{"name": "webhook-secrets", "mountPath": "/etc/hubsync/webhook", "secret": "hubsync.webhookSecret", "key": "webhook-secrets.json"}]},
  {"name": "mapper", "calls": ["writer"], "apiClients": true, "hubspotEgress": false, "http": false, "queue": "events",
   "env": "hubsync.env.mapper",
   "volumes": [{"name": "mappings", "mountPath": "/etc/hubsync/mappings", "configMap": "hubsync.mappingsConfigMap", "checksum": "mapper.mappings"}]},
  {"name": "writer", "calls": ["auth"], "apiClients": true, "hubspotEgress": true, "http": false, "queue": "writes",
   "env": "hubsync.env.writer",
   "volumes": []}
]
{{- end -}}

{{/* The component names, in table order, as a JSON list: `include "hubsync.componentNames" $ | fromJsonArray`. */}}
{{- define "hubsync.componentNames" -}}
{{- $names := list -}}
{{- range $spec := include "hubsync.componentTable" . | fromJsonArray -}}
{{- $names = append $names $spec.name -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* A value of .Values by dotted path ("mapper.mappings"). Takes (list $ "a.b"). */}}
{{- define "hubsync.valueAt" -}}
{{- $value := (index . 0).Values -}}
{{- range $key := splitList "." (index . 1) -}}
{{- $value = index $value $key -}}
{{- end -}}
{{- toJson $value -}}
{{- end -}}
