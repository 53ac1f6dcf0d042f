{{/*
The public templates. Each is called with the root context (`.`) and reads
.Values.healthSidecar; each renders YAML to be nindent-ed under the key its name says:

  initContainers: {{- include "health-sidecar.initContainers" . | nindent 8 }}
  containers:     - your app ...  {{- include "health-sidecar.containers" . | nindent 8 }}
  volumes:        {{- include "health-sidecar.volumes" . | nindent 8 }}
  readinessProbe: {{- include "health-sidecar.readinessProbe" . | nindent 12 }} (your app's)

plus health-sidecar.checksConfigMap (the ConfigMap of healthSidecar.checks, a whole object) and
health-sidecar.podAnnotations (its checksum, to roll the pods when the checks change).
*/}}

{{/* The native sidecar (restartPolicy: Always) when healthSidecar.nativeSidecar, else nothing. */}}
{{- define "health-sidecar.initContainers" -}}
{{- $hs := fromJson (include "health-sidecar-lib.config" .) }}
{{- if $hs.nativeSidecar }}
{{- include "health-sidecar-lib.container" (dict "hs" $hs "root" .) }}
{{- end }}
{{- end }}

{{/* The same container for `containers:` when nativeSidecar is false, else nothing. */}}
{{- define "health-sidecar.containers" -}}
{{- $hs := fromJson (include "health-sidecar-lib.config" .) }}
{{- if not $hs.nativeSidecar }}
{{- include "health-sidecar-lib.container" (dict "hs" $hs "root" .) }}
{{- end }}
{{- end }}

{{/*
The app container's readinessProbe: GET /ready on the sidecar's port, by number (a named port
of another container does not resolve). Readiness is the sidecar's cached database state: no
probe touches the app's connection pool.
*/}}
{{- define "health-sidecar.readinessProbe" -}}
{{- $hs := fromJson (include "health-sidecar-lib.config" .) }}
{{- $p := $hs.readinessProbe -}}
httpGet:
  path: /ready
  port: {{ int $hs.port }}
periodSeconds: {{ int $p.periodSeconds }}
timeoutSeconds: {{ int $p.timeoutSeconds }}
failureThreshold: {{ int $p.failureThreshold }}
successThreshold: {{ int $p.successThreshold }}
{{- end }}

{{/*
Volumes: the DSN Secret, the check ConfigMap (with checks), extra DSN and TLS Secrets.

Every file is projected with mode 0444. The including chart owns the pod's securityContext, and
without an fsGroup kubelet projects the files owned by root:root with exactly defaultMode: with
0440 (or 0400) only uid or gid 0 could read them, not the sidecar's uid 65532 nor whatever
runAsUser/runAsGroup the pod sets, so the sidecar would exit 2 and, as a native sidecar, hold the
whole pod back. With an fsGroup kubelet ORs 0440 into the mode and sets the group: 0444 stays
0444. Readable by "other" is not readable by the pod's other containers: these volumes are
mounted into the sidecar container only, and a container without the mount cannot reach
kubelet's pod directory on the node. The sidecar builds its own TLS context, so a client key need
not follow libpq's 0600/0640 rule.
*/}}
{{- define "health-sidecar.volumes" -}}
{{- $hs := fromJson (include "health-sidecar-lib.config" .) -}}
- name: database-url
  secret:
    secretName: {{ $hs.database.existingSecret }}
    items:
      - key: {{ $hs.database.existingSecretKey }}
        path: url
    defaultMode: 0444
{{- if $hs.checks }}
- name: checks
  configMap:
    name: {{ include "health-sidecar-lib.checksConfigMapName" (dict "hs" $hs "root" .) }}
    defaultMode: 0444
{{- end }}
{{- range $hs.extraDatabaseSecrets }}
- name: {{ printf "db-%s" .name }}
  secret:
    secretName: {{ .secretName }}
    # Only the DSN, whatever else the Secret holds.
    items:
      - key: {{ .key }}
        path: {{ .key }}
    defaultMode: 0444
{{- end }}
{{- range $hs.tlsSecrets }}
- name: {{ printf "tls-%s" .name }}
  secret:
    secretName: {{ .secretName }}
    defaultMode: 0444
{{- end }}
{{- end }}

{{/*
The check file (SIDECAR_CONFIG_FILE): `defaults:` (checkDefaults) and `checks:`. toYaml keeps
the values' types, which the sidecar checks strictly (a quoted "5" is not a number).
*/}}
{{- define "health-sidecar.checkFile" -}}
{{- $hs := fromJson (include "health-sidecar-lib.config" .) }}
{{- with $hs.checkDefaults }}
{{- toYaml (dict "defaults" .) }}
{{ end }}
{{- toYaml (dict "checks" $hs.checks) }}
{{- end }}

{{/* The ConfigMap of the check file, a whole object; nothing without healthSidecar.checks. */}}
{{- define "health-sidecar.checksConfigMap" -}}
{{- $hs := fromJson (include "health-sidecar-lib.config" .) }}
{{- if $hs.checks -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "health-sidecar-lib.checksConfigMapName" (dict "hs" $hs "root" .) }}
  namespace: {{ .Release.Namespace }}
  labels:
    app.kubernetes.io/name: health-sidecar
    app.kubernetes.io/instance: {{ .Release.Name }}
data:
  checks.yaml: |
    {{- include "health-sidecar.checkFile" . | nindent 4 }}
{{- end }}
{{- end }}

{{/*
Pod annotations (mapping lines): the check file's checksum, so a changed list rolls the pods (the
sidecar reads its check file at start only); nothing without checks.
*/}}
{{- define "health-sidecar.podAnnotations" -}}
{{- $hs := fromJson (include "health-sidecar-lib.config" .) }}
{{- if $hs.checks -}}
checksum/health-sidecar-checks: {{ include "health-sidecar.checkFile" . | sha256sum }}
{{- end }}
{{- end }}

{{- define "health-sidecar-lib.checksConfigMapName" -}}
{{- default (printf "%s-health-sidecar-checks" .root.Release.Name) .hs.checksConfigMapName | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "repository:tag" or "repository@digest"; a digest wins over a tag. */}}
{{- define "health-sidecar-lib.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- /* A values file's numbers are float64 to Helm: 20240101 would print as 2.0240101e+07. */}}
{{- printf "%s:%v" .repository (kindIs "float64" .tag | ternary (int64 .tag) .tag) }}
{{- end }}
{{- end }}

{{/*
The one definition of the sidecar container, as a list item. The same spec serves as a native
sidecar (an init container with restartPolicy: Always) or as a plain container.
*/}}
{{- define "health-sidecar-lib.container" -}}
{{- $hs := .hs -}}
- name: health-sidecar
  image: {{ include "health-sidecar-lib.image" $hs.image | quote }}
  imagePullPolicy: {{ $hs.image.pullPolicy }}
  {{- if $hs.nativeSidecar }}
  # A native sidecar: started before the app, kept running beside it, stopped after it.
  restartPolicy: Always
  {{- end }}
  ports:
    - name: sidecar
      containerPort: {{ int $hs.port }}
      protocol: TCP
  env:
    - name: SIDECAR_DATABASE_URL_FILE
      value: "/etc/health-sidecar/database/url"
    {{- if $hs.checks }}
    - name: SIDECAR_CONFIG_FILE
      value: "/etc/health-sidecar/checks/checks.yaml"
    {{- end }}
    # Set explicitly, always: a Service named "sidecar" in the namespace would otherwise inject
    # SIDECAR_PORT=tcp://... through service links, and an explicit env entry wins over those.
    # "::" listens on IPv6 and IPv4 (IPv4 only where the kernel has none): kubelet probes the pod
    # IP, which is IPv6 in an IPv6-only cluster.
    - name: SIDECAR_HOST
      value: "::"
    - name: SIDECAR_PORT
      value: {{ int $hs.port | quote }}
    - name: SIDECAR_CHECK_INTERVAL
      value: {{ $hs.checkInterval | quote }}
    - name: SIDECAR_CHECK_TIMEOUT
      value: {{ $hs.checkTimeout | quote }}
    - name: SIDECAR_BACKOFF_MAX
      value: {{ $hs.backoffMax | quote }}
    - name: SIDECAR_FAILURE_THRESHOLD
      value: {{ $hs.failureThreshold | quote }}
    - name: SIDECAR_SUCCESS_THRESHOLD
      value: {{ $hs.successThreshold | quote }}
    - name: SIDECAR_DRAIN_SECONDS
      value: {{ $hs.drainSeconds | quote }}
    - name: SIDECAR_LOG_LEVEL
      value: {{ $hs.logLevel | quote }}
    - name: SIDECAR_LOG_FORMAT
      value: {{ $hs.logFormat | quote }}
    {{- with $hs.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  # /health answers from memory and never depends on the database, so a database outage can
  # never restart the sidecar. Startup uses /health, not /startup: a native sidecar holds the
  # app back until this probe passes, and the app must start even while the database is down.
  startupProbe:
    httpGet:
      path: /health
      port: sidecar
    periodSeconds: {{ int $hs.startupProbe.periodSeconds }}
    timeoutSeconds: {{ int $hs.startupProbe.timeoutSeconds }}
    failureThreshold: {{ int $hs.startupProbe.failureThreshold }}
    successThreshold: 1
  # Restarts the sidecar only when its probe loop has died or stalled.
  livenessProbe:
    httpGet:
      path: /health
      port: sidecar
    periodSeconds: {{ int $hs.livenessProbe.periodSeconds }}
    timeoutSeconds: {{ int $hs.livenessProbe.timeoutSeconds }}
    failureThreshold: {{ int $hs.livenessProbe.failureThreshold }}
    successThreshold: 1
  # No readinessProbe here: your app container's readinessProbe reads /ready
  # (health-sidecar.readinessProbe), the one signal the pod's readiness needs.
  resources:
    {{- toYaml $hs.resources | nindent 4 }}
  securityContext:
    {{- toYaml $hs.securityContext | nindent 4 }}
  # Every Secret is mounted as a directory, never with subPath: the kubelet updates a Secret
  # volume in place (an atomic symlink swap), which is how a rotated DSN reaches the sidecar
  # without a restart; a subPath mount is a bind mount of one file and never sees an update.
  volumeMounts:
    - name: database-url
      mountPath: /etc/health-sidecar/database
      readOnly: true
    {{- if $hs.checks }}
    - name: checks
      mountPath: /etc/health-sidecar/checks
      readOnly: true
    {{- end }}
    {{- range $hs.extraDatabaseSecrets }}
    - name: {{ printf "db-%s" .name }}
      mountPath: {{ printf "/etc/health-sidecar/db/%s" .name }}
      readOnly: true
    {{- end }}
    {{- range $hs.tlsSecrets }}
    - name: {{ printf "tls-%s" .name }}
      mountPath: {{ printf "/etc/health-sidecar/tls/%s" .name }}
      readOnly: true
    {{- end }}
{{- end }}
