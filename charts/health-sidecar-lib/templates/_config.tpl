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
{{- $defaults := fromYaml (include "health-sidecar-lib.defaults" .) }}
{{- range $key, $_ := $user }}
{{- if not (hasKey $defaults $key) }}
{{- fail (printf "healthSidecar.%s: not a setting of the health-sidecar library (known: %s)" $key (keys $defaults | sortAlpha | join ", ")) }}
{{- end }}
{{- end }}
{{- $hs := mustMergeOverwrite $defaults $user }}
{{- include "health-sidecar-lib.validate" (dict "hs" $hs "root" .) }}
{{- toJson $hs }}
{{- end }}

{{/* One `fail` per bad value, naming healthSidecar.<key>. */}}
{{- define "health-sidecar-lib.validate" -}}
{{- $hs := .hs }}
{{- if not $hs.database.existingSecret }}
{{- fail "healthSidecar.database.existingSecret: set the name of the Secret that holds the DSN (under healthSidecar.database.existingSecretKey, default database-url)" }}
{{- end }}
{{- if not (kindIs "bool" $hs.nativeSidecar) }}
{{- fail (printf "healthSidecar.nativeSidecar: must be true or false, not %v" $hs.nativeSidecar) }}
{{- end }}
{{- if and $hs.nativeSidecar (not (semverCompare ">=1.29.0-0" .root.Capabilities.KubeVersion.Version)) }}
{{- fail (printf "healthSidecar.nativeSidecar needs Kubernetes 1.29 or newer (this is %s); set healthSidecar.nativeSidecar=false" .root.Capabilities.KubeVersion.Version) }}
{{- end }}
{{- range $key := list "port" "checkInterval" "checkTimeout" "backoffMax" "failureThreshold" "successThreshold" "drainSeconds" }}
{{- $v := index $hs $key }}
{{- if not (or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v)) }}
{{- fail (printf "healthSidecar.%s: must be a number, not %q" $key (toString $v)) }}
{{- end }}
{{- end }}
{{- if or (lt (float64 $hs.port) 1.0) (gt (float64 $hs.port) 65535.0) (ne (float64 $hs.port) (float64 (int $hs.port))) }}
{{- fail (printf "healthSidecar.port: must be a port number from 1 to 65535, not %v" $hs.port) }}
{{- end }}
{{- if not (has (toString $hs.logLevel) (list "debug" "info" "warning" "error" "critical")) }}
{{- fail (printf "healthSidecar.logLevel: must be debug, info, warning, error or critical, not %q" (toString $hs.logLevel)) }}
{{- end }}
{{- if not (has (toString $hs.logFormat) (list "json" "console")) }}
{{- fail (printf "healthSidecar.logFormat: must be json or console, not %q" (toString $hs.logFormat)) }}
{{- end }}
{{- if not (or $hs.image.tag $hs.image.digest) }}
{{- fail "healthSidecar.image.tag: set a tag or healthSidecar.image.digest" }}
{{- end }}
{{- if and $hs.checkDefaults (not $hs.checks) }}
{{- fail "healthSidecar.checkDefaults: applies only to healthSidecar.checks, which is empty" }}
{{- end }}
{{- range $field := list "checks" "extraDatabaseSecrets" "tlsSecrets" }}
{{- $items := index $hs $field }}
{{- if not (kindIs "slice" $items) }}
{{- fail (printf "healthSidecar.%s: must be a list" $field) }}
{{- end }}
{{- $names := dict }}
{{- range $items }}
{{- if not (and (kindIs "map" .) .name) }}
{{- fail (printf "healthSidecar.%s: every item needs a name" $field) }}
{{- end }}
{{- if hasKey $names (toString .name) }}
{{- fail (printf "healthSidecar.%s: the name %q is used twice; names must be unique" $field (toString .name)) }}
{{- end }}
{{- $_ := set $names (toString .name) true }}
{{- if and (ne $field "checks") (not .secretName) }}
{{- fail (printf "healthSidecar.%s: item %q needs a secretName" $field (toString .name)) }}
{{- end }}
{{- if and (eq $field "extraDatabaseSecrets") (not .key) }}
{{- fail (printf "healthSidecar.extraDatabaseSecrets: item %q needs a key" (toString .name)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
