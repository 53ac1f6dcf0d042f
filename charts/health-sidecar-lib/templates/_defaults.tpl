{{/*
Every default of `healthSidecar:`. A library chart cannot give its parent default values (its
values.yaml is never read for the parent's .Values), so the templates merge these under what the
user set: `healthSidecar: {database: {existingSecret: my-db}}` is a complete configuration.
The names and numbers are those of the app chart's sidecar.*, database.*, checks... (its
values.yaml explains each number); readinessProbe holds the timings of your app container's
readinessProbe (the app chart's app.readinessProbe).
*/}}
{{- define "health-sidecar-lib.defaults" -}}
nativeSidecar: true
image:
  repository: ghcr.io/glucolens/health-sidecar
  tag: "0.3.0"
  digest: ""
  pullPolicy: IfNotPresent
port: 8081
checkInterval: 5
checkTimeout: 2
backoffMax: 30
failureThreshold: 1
successThreshold: 1
drainSeconds: 5
logLevel: info
logFormat: json
extraEnv: []
resources:
  requests:
    cpu: 10m
    memory: 48Mi
  limits:
    memory: 128Mi
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  privileged: false
  capabilities:
    drop:
      - ALL
  seccompProfile:
    type: RuntimeDefault
startupProbe:
  periodSeconds: 1
  timeoutSeconds: 1
  failureThreshold: 30
livenessProbe:
  periodSeconds: 10
  timeoutSeconds: 1
  failureThreshold: 3
readinessProbe:
  periodSeconds: 5
  timeoutSeconds: 1
  failureThreshold: 2
  successThreshold: 1
database:
  existingSecret: ""
  existingSecretKey: database-url
checks: []
checkDefaults: {}
extraDatabaseSecrets: []
tlsSecrets: []
# "" = "<release>-health-sidecar-checks"
checksConfigMapName: ""
{{- end }}
