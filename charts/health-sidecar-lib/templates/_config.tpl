{{/*
The sidecar's configuration: the defaults (_defaults.tpl) with .Values.healthSidecar merged over
them, checked. Called with the root context; returns JSON (include can only return text).
A parent chart with values of another shape calls the public templates with a root-shaped dict,
(dict "Values" (dict "healthSidecar" ...) "Release" .Release "Capabilities" .Capabilities), as
charts/health-sidecar does.
*/}}
{{- define "health-sidecar-lib.config" -}}
{{- $user := dict }}
{{- with .Values.healthSidecar }}
{{- if not (kindIs "map" .) }}
{{- fail "healthSidecar: must be a mapping of settings" }}
{{- end }}
{{- $user = deepCopy . }}
{{- end }}
{{- $hs := fromYaml (include "health-sidecar-lib.defaults" .) }}
{{- include "health-sidecar-lib.mergeInto" (dict "dst" $hs "src" $user) }}
{{- include "health-sidecar-lib.validate" (dict "hs" $hs "root" .) }}
{{- toJson $hs }}
{{- end }}

{{/*
Your values over the defaults, at every depth: a mapping merges into a mapping, anything else
(a list included) replaces; null removes a default, as in Helm's own values (`runAsUser: null`
leaves the uid to the pod, as OpenShift's restricted SCC wants). A null for a key without a
default stays, so that validation refuses it by name.
*/}}
{{- define "health-sidecar-lib.mergeInto" -}}
{{- $dst := .dst }}
{{- range $key, $value := .src }}
{{- if and (kindIs "invalid" $value) (hasKey $dst $key) }}
{{- $_ := unset $dst $key }}
{{- else if and (kindIs "map" $value) (kindIs "map" (get $dst $key)) }}
{{- include "health-sidecar-lib.mergeInto" (dict "dst" (get $dst $key) "src" $value) }}
{{- else }}
{{- $_ := set $dst $key $value }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Every key and value against the schema (_schema.tpl), then what a schema cannot say. Each
problem is one line naming healthSidecar.<key>; all of them are reported at once.
*/}}
{{- define "health-sidecar-lib.validate" -}}
{{- $hs := .hs }}
{{- $problems := include "health-sidecar-lib.schemaProblems" $hs | trim }}
{{- if $problems }}
{{- fail (printf "bad health-sidecar values:\n%s" $problems) }}
{{- end }}
{{- if not $hs.database.existingSecret }}
{{- fail "healthSidecar.database.existingSecret: set the name of the Secret that holds the DSN (under healthSidecar.database.existingSecretKey, default database-url)" }}
{{- end }}
{{- if and $hs.nativeSidecar (not (semverCompare ">=1.29.0-0" .root.Capabilities.KubeVersion.Version)) }}
{{- fail (printf "healthSidecar.nativeSidecar needs Kubernetes 1.29 or newer (this is %s); set healthSidecar.nativeSidecar=false" .root.Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if not (or $hs.image.tag $hs.image.digest) }}
{{- fail "healthSidecar.image.tag: set a tag or healthSidecar.image.digest" }}
{{- end }}
{{- if and $hs.checkDefaults (not $hs.checks) }}
{{- fail "healthSidecar.checkDefaults: applies only to healthSidecar.checks, which is empty" }}
{{- end }}
{{- /* The container's own variables: an extraEnv entry of the same name comes later in env, so
it would win in the pod, and the listener, probes or files would no longer agree. */}}
{{- $own := dict
  "SIDECAR_PORT" "set healthSidecar.port instead (the containerPort and every probe follow it)"
  "SIDECAR_HOST" "the library sets SIDECAR_HOST to :: (every address of the pod)"
  "SIDECAR_DATABASE_URL_FILE" "the DSN file is the Secret healthSidecar.database.existingSecret"
  "SIDECAR_DATABASE_URL" "the DSN goes into the Secret healthSidecar.database.existingSecret, not the pod spec"
  "SIDECAR_CONFIG_FILE" "the check file is made from healthSidecar.checks"
  "SIDECAR_CHECK_INTERVAL" "set healthSidecar.checkInterval instead"
  "SIDECAR_CHECK_TIMEOUT" "set healthSidecar.checkTimeout instead"
  "SIDECAR_BACKOFF_MAX" "set healthSidecar.backoffMax instead"
  "SIDECAR_FAILURE_THRESHOLD" "set healthSidecar.failureThreshold instead"
  "SIDECAR_SUCCESS_THRESHOLD" "set healthSidecar.successThreshold instead"
  "SIDECAR_DRAIN_SECONDS" "set healthSidecar.drainSeconds instead"
  "SIDECAR_LOG_LEVEL" "set healthSidecar.logLevel instead"
  "SIDECAR_LOG_FORMAT" "set healthSidecar.logFormat instead" }}
{{- range $i, $env := $hs.extraEnv }}
{{- with get $own (toString $env.name) }}
{{- fail (printf "healthSidecar.extraEnv[%d]: %s is one of the container's own variables: %s" $i $env.name .) }}
{{- end }}
{{- end }}
{{- range $field := list "checks" "extraDatabaseSecrets" "tlsSecrets" }}
{{- $names := dict }}
{{- range (index $hs $field) }}
{{- if hasKey $names (toString .name) }}
{{- fail (printf "healthSidecar.%s: the name %q is used twice; names must be unique" $field (toString .name)) }}
{{- end }}
{{- $_ := set $names (toString .name) true }}
{{- end }}
{{- end }}
{{- end }}
