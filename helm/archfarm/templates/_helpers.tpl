{{/* Names, labels and the Secret references every template shares. */}}

{{- define "archfarm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Cut to 40 so suffixes such as "-agent-ppc64le-emulated" still fit in 63 characters. */}}
{{- define "archfarm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "archfarm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "archfarm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels; call with (dict "ctx" $ "component" "coordinator"). */}}
{{- define "archfarm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "archfarm.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "archfarm.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{- define "archfarm.scheme" -}}
{{- if .Values.coordinator.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{- define "archfarm.coordinatorUrl" -}}
{{- if .Values.agents.coordinatorUrl }}
{{- .Values.agents.coordinatorUrl }}
{{- else }}
{{- printf "%s://%s.%s.svc:%v" (include "archfarm.scheme" .) (include "archfarm.fullname" .) .Release.Namespace .Values.service.port }}
{{- end }}
{{- end }}

{{/* Where each secret value lives: a Secret the user brought, or the chart's own. */}}
{{- define "archfarm.databaseSecret" -}}
{{- default (include "archfarm.fullname" .) .Values.database.existingSecret }}
{{- end }}
{{- define "archfarm.databaseKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}
{{- define "archfarm.authSecret" -}}
{{- default (include "archfarm.fullname" .) .Values.auth.existingSecret }}
{{- end }}
{{- define "archfarm.registryAuthSecret" -}}
{{- default (include "archfarm.fullname" .) .Values.registryAuth.existingSecret }}
{{- end }}
{{- define "archfarm.registryAuthKey" -}}
{{- if .Values.registryAuth.existingSecret }}{{ .Values.registryAuth.existingSecretKey }}{{ else }}registry-auth.json{{ end }}
{{- end }}
{{- define "archfarm.registryAuthEnabled" -}}
{{- if or .Values.registryAuth.config .Values.registryAuth.existingSecret }}true{{ end }}
{{- end }}

{{/*
A token for the chart's Secret: the value given, else the one the release's Secret already holds
(so upgrades keep it), else a new random one. `lookup` sees nothing under `helm template` or
--dry-run, so there a new token appears on every render: use auth.existingSecret there.
Call with (list $ "api-token" .Values.auth.apiToken).
*/}}
{{- define "archfarm.token" -}}
{{- $ctx := index . 0 }}
{{- $key := index . 1 }}
{{- $given := index . 2 }}
{{- if $given }}
{{- $given }}
{{- else }}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace (include "archfarm.fullname" $ctx) | default dict }}
{{- $data := get $existing "data" | default dict }}
{{- if hasKey $data $key }}
{{- index $data $key | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Stops rendering with a message naming the value to set. */}}
{{- define "archfarm.validate" -}}
{{- $db := .Values.database }}
{{- if and (not $db.url) (not $db.existingSecret) }}
{{- fail "archfarm: set database.url (postgres://USER:PASSWORD@HOST:5432/DB) or database.existingSecret: the coordinator replicas share one PostgreSQL database, and SQLite on a pod's disk cannot be shared" }}
{{- end }}
{{- if and $db.url (not $db.existingSecret) (not (regexMatch "^postgres(ql)?://" $db.url)) }}
{{- fail "archfarm: database.url must start with postgres:// or postgresql:// (SQLite on a pod's disk cannot be shared by replicas)" }}
{{- end }}
{{- if and .Values.coordinator.tls.enabled (not .Values.coordinator.tls.existingSecret) }}
{{- fail "archfarm: coordinator.tls.enabled needs coordinator.tls.existingSecret (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- if and (include "archfarm.registryAuthEnabled" .) (not .Values.coordinator.tls.enabled) (not .Values.coordinator.config.insecureCredentialsOverHttp) }}
{{- fail "archfarm: registryAuth is set but the coordinator serves plain HTTP, so it would refuse the credential to agents reaching it from pod IPs and every push would fail: enable coordinator.tls (a kubernetes.io/tls Secret), or set coordinator.config.insecureCredentialsOverHttp: true if a service mesh encrypts pod-to-pod traffic" }}
{{- end }}
{{- if and .Values.keda.enabled (not .Values.keda.prometheusServerAddress) }}
{{- fail "archfarm: keda.enabled needs keda.prometheusServerAddress (the Prometheus that scrapes the coordinator)" }}
{{- end }}
{{- end }}
