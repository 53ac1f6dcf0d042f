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
files/alerts.yaml matches scrape jobs on "health-sidecar", which this name holds unless
overridden.
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

{{/* Where the DSN file is mounted in the sidecar; SIDECAR_DATABASE_URL_FILE points at it. */}}
{{- define "health-sidecar.databaseMountPath" -}}
/etc/health-sidecar/database
{{- end }}

{{/*
Roots of the other mounts in the sidecar. extraDatabaseSecrets[i] lands in
<dbMountRoot>/<name>/<key>, tlsSecrets[i] in <tlsMountRoot>/<name>/<every key>, the check file at
<checksMountPath>/checks.yaml.
*/}}
{{- define "health-sidecar.dbMountRoot" -}}
/etc/health-sidecar/db
{{- end }}

{{- define "health-sidecar.tlsMountRoot" -}}
/etc/health-sidecar/tls
{{- end }}

{{- define "health-sidecar.checksMountPath" -}}
/etc/health-sidecar/checks
{{- end }}

{{/*
The check file (SIDECAR_CONFIG_FILE) in the sidecar's format: `defaults:` (when checkDefaults is
set) and `checks:`. toYaml keeps the values' types, which the sidecar checks strictly (a quoted
"5" is not a number). The ConfigMap holds it and the pod template carries its checksum.
*/}}
{{- define "health-sidecar.checkFile" -}}
{{- with .Values.checkDefaults }}
{{- toYaml (dict "defaults" .) }}
{{ end }}
{{- toYaml (dict "checks" .Values.checks) }}
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
  path: {{ .probe.path }}
  port: http
{{- else -}}
tcpSocket:
  port: http
{{- end }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
successThreshold: 1
{{- end }}

{{/*
The sidecar container. The same spec serves as a native sidecar (an init container with
restartPolicy: Always) or as a plain container; deployment.yaml decides where it goes.
*/}}
{{- define "health-sidecar.sidecarContainer" -}}
{{- $sc := .Values.sidecar -}}
- name: health-sidecar
  image: {{ include "health-sidecar.image" (dict "image" $sc.image "defaultTag" .Chart.AppVersion) | quote }}
  imagePullPolicy: {{ $sc.image.pullPolicy }}
  {{- if .Values.sidecar.nativeSidecar }}
  # A native sidecar: started before the app, kept running beside it, stopped after it.
  restartPolicy: Always
  {{- end }}
  ports:
    - name: sidecar
      containerPort: {{ $sc.port }}
      protocol: TCP
  env:
    - name: SIDECAR_DATABASE_URL_FILE
      value: {{ printf "%s/url" (include "health-sidecar.databaseMountPath" .) | quote }}
    {{- if .Values.checks }}
    - name: SIDECAR_CONFIG_FILE
      value: {{ printf "%s/checks.yaml" (include "health-sidecar.checksMountPath" .) | quote }}
    {{- end }}
    - name: SIDECAR_PORT
      value: {{ $sc.port | quote }}
    - name: SIDECAR_CHECK_INTERVAL
      value: {{ $sc.checkInterval | quote }}
    - name: SIDECAR_CHECK_TIMEOUT
      value: {{ $sc.checkTimeout | quote }}
    - name: SIDECAR_BACKOFF_MAX
      value: {{ $sc.backoffMax | quote }}
    - name: SIDECAR_FAILURE_THRESHOLD
      value: {{ $sc.failureThreshold | quote }}
    - name: SIDECAR_SUCCESS_THRESHOLD
      value: {{ $sc.successThreshold | quote }}
    - name: SIDECAR_DRAIN_SECONDS
      value: {{ $sc.drainSeconds | quote }}
    - name: SIDECAR_LOG_LEVEL
      value: {{ $sc.logLevel | quote }}
    - name: SIDECAR_LOG_FORMAT
      value: {{ $sc.logFormat | quote }}
    {{- with $sc.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  # /health answers from memory and never depends on the database, so a database outage can
  # never restart the sidecar. The numbers are explained in values.yaml (sidecar.startupProbe).
  startupProbe:
    httpGet:
      path: /health
      port: sidecar
    periodSeconds: {{ $sc.startupProbe.periodSeconds }}
    timeoutSeconds: {{ $sc.startupProbe.timeoutSeconds }}
    failureThreshold: {{ $sc.startupProbe.failureThreshold }}
    successThreshold: 1
  # Restarts the sidecar only when its probe loop has died or stalled (values.yaml:
  # sidecar.livenessProbe).
  livenessProbe:
    httpGet:
      path: /health
      port: sidecar
    periodSeconds: {{ $sc.livenessProbe.periodSeconds }}
    timeoutSeconds: {{ $sc.livenessProbe.timeoutSeconds }}
    failureThreshold: {{ $sc.livenessProbe.failureThreshold }}
    successThreshold: 1
  # No readinessProbe here: the app container's readinessProbe reads /ready, and that is the
  # one signal the pod's readiness needs.
  resources:
    {{- toYaml $sc.resources | nindent 4 }}
  securityContext:
    {{- toYaml $sc.securityContext | nindent 4 }}
  # Every Secret is mounted as a directory, never with subPath: the kubelet updates a Secret
  # volume in place (an atomic symlink swap), which is how a rotated DSN reaches the sidecar
  # without a restart; a subPath mount is a bind mount of one file and never sees an update.
  volumeMounts:
    - name: database-url
      mountPath: {{ include "health-sidecar.databaseMountPath" . }}
      readOnly: true
    {{- if .Values.checks }}
    - name: checks
      mountPath: {{ include "health-sidecar.checksMountPath" . }}
      readOnly: true
    {{- end }}
    {{- range .Values.extraDatabaseSecrets }}
    - name: {{ printf "db-%s" .name }}
      mountPath: {{ printf "%s/%s" (include "health-sidecar.dbMountRoot" $) .name }}
      readOnly: true
    {{- end }}
    {{- range .Values.tlsSecrets }}
    - name: {{ printf "tls-%s" .name }}
      mountPath: {{ printf "%s/%s" (include "health-sidecar.tlsMountRoot" $) .name }}
      readOnly: true
    {{- end }}
{{- end }}
