{{/*
Naming and labels, as `helm create` lays them out. Every define is namespaced with the chart
name so a parent chart's helpers of the same name cannot shadow them.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "health-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified name of every object: fullnameOverride, else "<release>-<chart>", or just the
release name when it already holds the chart name. DNS names are limited to 63 characters.
*/}}
{{- define "health-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "health-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "health-sidecar.labels" -}}
helm.sh/chart: {{ include "health-sidecar.chart" . }}
{{ include "health-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: glucolens
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the pods; immutable once a Deployment exists, so keep them few. */}}
{{- define "health-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "health-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Secret that holds the DSN: an existing one, or the one this chart creates. */}}
{{- define "health-sidecar.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- printf "%s-database" (include "health-sidecar.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The key inside that Secret. */}}
{{- define "health-sidecar.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else -}}
database-url
{{- end }}
{{- end }}

{{/* The ConfigMap holding the check file. */}}
{{- define "health-sidecar.checksConfigMapName" -}}
{{- printf "%s-checks" (include "health-sidecar.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "repository:tag" or "repository@digest"; a digest wins over a tag. */}}
{{- define "health-sidecar.image" -}}
{{- $image := .image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (toString (default .defaultTag $image.tag)) }}
{{- end }}
{{- end }}

{{/* Fail early, with a message a person can act on, on values the schema cannot judge. */}}
{{- define "health-sidecar.validate" -}}
{{- with .Values.database.url }}
{{- /* Here, not in values.schema.json: Helm's schema error would quote the URL, password and all. */}}
{{- if not (regexMatch "^postgres(ql)?(\\+[A-Za-z0-9_]+)?://[^/]" .) }}
{{- fail "database.url: must be a postgresql:// or postgres:// URL (the value is not shown: it holds a password)" }}
{{- end }}
{{- end }}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) }}
{{- fail "set database.existingSecret (a Secret holding the DSN under database.existingSecretKey) or database.url (the chart creates the Secret)" }}
{{- end }}
{{- if and .Values.sidecar.nativeSidecar (not (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version)) }}
{{- fail (printf "sidecar.nativeSidecar needs Kubernetes 1.29 or newer (this is %s); set sidecar.nativeSidecar=false" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if not (or .Values.app.image.tag .Values.app.image.digest) }}
{{- fail "set app.image.tag or app.image.digest: the app image has no default version" }}
{{- end }}
{{- if eq (int .Values.app.port) (int .Values.sidecar.port) }}
{{- fail "app.port and sidecar.port must differ: both containers share the pod's network namespace" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (ne (toString .Values.podDisruptionBudget.minAvailable) "") (ne (toString .Values.podDisruptionBudget.maxUnavailable) "") }}
{{- fail "set only one of podDisruptionBudget.minAvailable and podDisruptionBudget.maxUnavailable" }}
{{- end }}
{{- $drain := float64 .Values.sidecar.drainSeconds }}
{{- if and (gt $drain 0.0) (ge $drain (float64 .Values.terminationGracePeriodSeconds)) }}
{{- fail (printf "sidecar.drainSeconds (%v) must be less than terminationGracePeriodSeconds (%v): kubelet kills the pod when the grace period ends, in the middle of the drain" .Values.sidecar.drainSeconds .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- if and .Values.checkDefaults (not .Values.checks) }}
{{- fail "checkDefaults applies only to the checks list, which is empty; set checks, or tune the single check with sidecar.checkInterval and friends" }}
{{- end }}
{{- $checkNames := dict }}
{{- range .Values.checks }}
{{- if hasKey $checkNames .name }}
{{- fail (printf "checks: the name %q is used twice; check names must be unique" .name) }}
{{- end }}
{{- $_ := set $checkNames .name true }}
{{- end }}
{{- range $field := list "extraDatabaseSecrets" "tlsSecrets" }}
{{- $names := dict }}
{{- range (index $.Values $field) }}
{{- if hasKey $names .name }}
{{- fail (printf "%s: the name %q is used twice; each one is its own directory and volume" $field .name) }}
{{- end }}
{{- $_ := set $names .name true }}
{{- end }}
{{- end }}
{{- end }}

{{/*
An app probe that must not depend on the database: TCP on the app port, or GET on a path of the
app's own that does not touch the database. Called with (dict "probe" ... "port" ...).
*/}}
{{- define "health-sidecar.appProbe" -}}
{{- if eq .probe.type "httpGet" -}}
httpGet:
  path: {{ .probe.path | quote }}
  port: http
{{- else -}}
tcpSocket:
  port: http
{{- end }}
{{- /* int64: Helm holds numbers as float64, which print as 1e+06 from a million up. */}}
initialDelaySeconds: {{ .probe.initialDelaySeconds | int64 }}
periodSeconds: {{ .probe.periodSeconds | int64 }}
timeoutSeconds: {{ .probe.timeoutSeconds | int64 }}
failureThreshold: {{ .probe.failureThreshold | int64 }}
successThreshold: 1
{{- end }}

{{/*
What the library chart (charts/health-sidecar-lib) reads as .Values.healthSidecar, built from this
chart's own values: sidecar.* with database.*, checks, checkDefaults, extraDatabaseSecrets,
tlsSecrets and app.readinessProbe beside it, the DSN Secret resolved to the one this chart creates
when database.existingSecret is empty. Returns JSON (include returns text).
*/}}
{{- define "health-sidecar.libValues" -}}
{{- $hs := omit (deepCopy .Values.sidecar) "image" }}
{{- $image := deepCopy .Values.sidecar.image }}
{{- $_ := set $image "tag" (toString (default .Chart.AppVersion $image.tag)) }}
{{- $_ = set $hs "image" $image }}
{{- $_ = set $hs "readinessProbe" (deepCopy .Values.app.readinessProbe) }}
{{- $_ = set $hs "database" (dict "existingSecret" (include "health-sidecar.databaseSecretName" .) "existingSecretKey" (include "health-sidecar.databaseSecretKey" .)) }}
{{- $_ = set $hs "checks" (deepCopy .Values.checks) }}
{{- $_ = set $hs "checkDefaults" (deepCopy .Values.checkDefaults) }}
{{- $_ = set $hs "extraDatabaseSecrets" (deepCopy .Values.extraDatabaseSecrets) }}
{{- $_ = set $hs "tlsSecrets" (deepCopy .Values.tlsSecrets) }}
{{- $_ = set $hs "checksConfigMapName" (include "health-sidecar.checksConfigMapName" .) }}
{{- include "health-sidecar.absentAsNull" (dict "defaults" (fromYaml (include "health-sidecar-lib.defaults" .)) "values" $hs) }}
{{- toJson $hs }}
{{- end }}

{{/*
A key of the library's defaults that this chart's values no longer hold becomes null for the
library, which then drops its default too. Helm applies a user's `null` by deleting the key, so
without this the library would put its own default back: sidecar.securityContext.runAsUser: null
must leave the uid to the pod (OpenShift's restricted SCC assigns one).
*/}}
{{- define "health-sidecar.absentAsNull" -}}
{{- $values := .values }}
{{- range $key, $default := .defaults }}
{{- if not (hasKey $values $key) }}
{{- $_ := set $values $key nil }}
{{- else if and (kindIs "map" $default) (kindIs "map" (get $values $key)) }}
{{- include "health-sidecar.absentAsNull" (dict "defaults" $default "values" (get $values $key)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The root-shaped context the library's templates are called with: this chart's values mapped into
healthSidecar, the release and the cluster's capabilities as they are. One container definition,
the library's, serves this chart and every chart that depends on the library.
*/}}
{{- define "health-sidecar.libContext" -}}
{{- toJson (dict "Values" (dict "healthSidecar" (fromJson (include "health-sidecar.libValues" .))) "Release" (dict "Name" .Release.Name "Namespace" .Release.Namespace) "Capabilities" (dict "KubeVersion" (dict "Version" .Capabilities.KubeVersion.Version))) }}
{{- end }}
