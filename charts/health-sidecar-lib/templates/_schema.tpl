{{/*
Render-time validation of healthSidecar, against a JSON Schema.

Helm validates a dependency's values.schema.json against the values under the dependency's own
name (`health-sidecar-lib:`), never against `healthSidecar:` of the chart that includes it, so
a schema file in this library would judge nothing. The templates validate instead: every key at
every depth against health-sidecar-lib.valuesSchema below, and checks/checkDefaults against the
check file's own schema (_checkfile_schema.tpl, generated from docs/check-file.schema.json: the
rules the sidecar's loader applies). A refusal names the key (healthSidecar.image.repositry) and
never quotes a value: a DSN or URL may hold a password.
*/}}

{{/*
The schema of healthSidecar (after the defaults are merged in). Closed at every depth: an
unknown key is a typo. `#/$defs/...` refers to the check file schema's definitions.
*/}}
{{- define "health-sidecar-lib.valuesSchema" -}}
type: object
additionalProperties: false
# What the container cannot do without: a null here (which drops the default) is refused by name.
required: [nativeSidecar, image, port, database, startupProbe, livenessProbe, readinessProbe]
properties:
  nativeSidecar: {type: boolean}
  image:
    type: object
    additionalProperties: false
    required: [repository, pullPolicy]
    properties:
      repository: {type: string, minLength: 1}
      # A whole number too (--set healthSidecar.image.tag=2, an unquoted 20240101), rendered as
      # its digits; not a fraction: 1.10 reaches the templates as 1.1, another tag.
      tag: {type: [string, integer]}
      digest: {type: string, pattern: "^(|sha256:[a-f0-9]{64})$"}
      pullPolicy: {enum: [Always, IfNotPresent, Never]}
  port: {type: integer, minimum: 1, maximum: 65535}
  # The sidecar's own ranges (sidecar/options.py, README "Settings").
  checkInterval: {type: number, exclusiveMinimum: 0, maximum: 3600}
  checkTimeout: {type: number, exclusiveMinimum: 0, maximum: 600}
  backoffMax: {type: number, exclusiveMinimum: 0, maximum: 3600}
  failureThreshold: {type: integer, minimum: 1, maximum: 1000}
  successThreshold: {type: integer, minimum: 1, maximum: 1000}
  drainSeconds: {type: number, minimum: 0, maximum: 3600}
  logLevel: {enum: [debug, info, warning, error, critical]}
  logFormat: {enum: [json, console]}
  extraEnv:
    type: array
    items:
      type: object
      additionalProperties: false
      required: [name]
      properties:
        name: {type: string, minLength: 1}
        value: {type: string}
        valueFrom: {type: object}
  resources:
    type: object
    additionalProperties: false
    properties:
      requests: {$ref: "#/$defs/resourceList"}
      limits: {$ref: "#/$defs/resourceList"}
  securityContext:
    type: object
    additionalProperties: false
    properties:
      allowPrivilegeEscalation: {type: boolean}
      appArmorProfile:
        type: object
        additionalProperties: false
        required: [type]
        properties:
          type: {enum: [RuntimeDefault, Localhost, Unconfined]}
          localhostProfile: {type: string}
      capabilities:
        type: object
        additionalProperties: false
        properties:
          add: {type: array, items: {type: string}}
          drop: {type: array, items: {type: string}}
      privileged: {type: boolean}
      procMount: {enum: [Default, Unmasked]}
      readOnlyRootFilesystem: {type: boolean}
      # null (in your values) drops a default: OpenShift's restricted SCC assigns the uid.
      runAsUser: {type: integer, minimum: 0}
      runAsGroup: {type: integer, minimum: 0}
      runAsNonRoot: {type: boolean}
      seLinuxOptions:
        type: object
        additionalProperties: false
        properties:
          level: {type: string}
          role: {type: string}
          type: {type: string}
          user: {type: string}
      seccompProfile:
        type: object
        additionalProperties: false
        required: [type]
        properties:
          type: {enum: [RuntimeDefault, Localhost, Unconfined]}
          localhostProfile: {type: string}
      windowsOptions:
        type: object
        additionalProperties: false
        properties:
          gmsaCredentialSpec: {type: string}
          gmsaCredentialSpecName: {type: string}
          hostProcess: {type: boolean}
          runAsUserName: {type: string}
  startupProbe: {$ref: "#/$defs/sidecarProbe"}
  livenessProbe: {$ref: "#/$defs/sidecarProbe"}
  readinessProbe:
    type: object
    additionalProperties: false
    properties:
      periodSeconds: {type: integer, minimum: 1}
      timeoutSeconds: {type: integer, minimum: 1}
      failureThreshold: {type: integer, minimum: 1}
      successThreshold: {type: integer, minimum: 1}
  database:
    type: object
    additionalProperties: false
    required: [existingSecretKey]
    properties:
      # "" is refused below with a message of its own.
      existingSecret: {type: string, pattern: "^(|[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$"}
      # A Secret's key, as the API server allows it: a newline here would write keys of its
      # own into the pod spec.
      existingSecretKey: {type: string, pattern: "^[-._a-zA-Z0-9]{1,253}$"}
  checks: {type: array, items: {$ref: "#/$defs/check"}}
  checkDefaults: {$ref: "#/$defs/defaults"}
  extraDatabaseSecrets:
    type: array
    items:
      type: object
      additionalProperties: false
      required: [name, secretName, key]
      properties:
        name: {$ref: "#/$defs/volumeName"}
        secretName: {$ref: "#/$defs/objectName"}
        key: {type: string, pattern: "^[-._a-zA-Z0-9]+$"}
  tlsSecrets:
    type: array
    items:
      type: object
      additionalProperties: false
      required: [name, secretName]
      properties:
        name: {$ref: "#/$defs/volumeName"}
        secretName: {$ref: "#/$defs/objectName"}
  # "" = "<release>-health-sidecar-checks"
  checksConfigMapName: {type: string, pattern: "^(|[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$"}
$defs:
  sidecarProbe:
    type: object
    additionalProperties: false
    properties:
      periodSeconds: {type: integer, minimum: 1}
      timeoutSeconds: {type: integer, minimum: 1}
      failureThreshold: {type: integer, minimum: 1}
  resourceList:
    type: object
    propertyNames: {pattern: "^(cpu|memory|ephemeral-storage|hugepages-.+|.+/.+)$"}
    # A quantity (as the app chart's values.schema.json has it): kubernetes-validate takes any
    # string here, the API server refuses the pod at install.
    additionalProperties: {type: [string, number], pattern: "^[0-9.]+[a-zA-Z]*$"}
  # A directory under /etc/health-sidecar/{db,tls}/ and part of a volume name (db-<name>).
  volumeName: {type: string, pattern: "^[a-z0-9]([a-z0-9-]{0,48}[a-z0-9])?$"}
  objectName: {type: string, pattern: "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"}
{{- end }}

{{/* Every problem of healthSidecar ($hs, defaults merged), one line each; "" when none. */}}
{{- define "health-sidecar-lib.schemaProblems" -}}
{{- $schema := fromYaml (include "health-sidecar-lib.valuesSchema" .) }}
{{- $defs := merge (dict) (get $schema "$defs") (get (fromJson (include "health-sidecar-lib.checkFileSchema" .)) "$defs") }}
{{- include "health-sidecar-lib.schemaErrors" (dict "schema" $schema "value" . "path" "healthSidecar" "defs" $defs) }}
{{- end }}

{{/* The JSON type of a value, as a schema's `type` names it. */}}
{{- define "health-sidecar-lib.jsonType" -}}
{{- if kindIs "invalid" . }}null
{{- else if kindIs "bool" . }}boolean
{{- else if kindIs "string" . }}string
{{- else if kindIs "slice" . }}array
{{- else if kindIs "map" . }}object
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "int32" .) (kindIs "uint64" .) }}integer
{{- else if and (kindIs "float64" .) (eq . (floor .)) }}integer
{{- else if kindIs "float64" . }}number
{{- else }}unknown
{{- end }}
{{- end }}

{{/*
The problems of one value against one schema, as lines "<path>: <what is wrong>". Called with
(dict "schema" "value" "path" "defs"). Implements the keywords the check file's schema uses
(.ci/check-file-schema refuses a schema with any other); values are never quoted.
*/}}
{{- define "health-sidecar-lib.schemaErrors" -}}
{{- $s := .schema }}
{{- $v := .value }}
{{- $path := .path }}
{{- $defs := .defs }}
{{- /* What the value should be, in words: its own description or its property's. */}}
{{- $here := $s.description | default .hint | default "" }}
{{- if hasKey $s "$ref" }}
{{- $name := trimPrefix "#/$defs/" (get $s "$ref") }}
{{- if not (hasKey $defs $name) }}
{{- fail (printf "health-sidecar-lib: the schema refers to %s, which it does not define" (get $s "$ref")) }}
{{- end }}
{{- include "health-sidecar-lib.schemaErrors" (dict "schema" (get $defs $name) "value" $v "path" $path "defs" $defs "hint" $here) }}
{{- end }}
{{- $kind := include "health-sidecar-lib.jsonType" $v }}
{{- $types := list }}
{{- if hasKey $s "type" }}
{{- $types = kindIs "string" $s.type | ternary (list $s.type) $s.type }}
{{- end }}
{{- if and $types (not (has $kind $types)) (not (and (eq $kind "integer") (has "number" $types))) }}
{{- printf "%s: must be %s, not %s\n" $path (join " or " $types) (eq $kind "null" | ternary "null" (printf "a value of type %s" $kind)) }}
{{- else }}
{{- if and (hasKey $s "enum") (not (has $v $s.enum)) }}
{{- printf "%s: must be one of %s\n" $path (join ", " $s.enum) }}
{{- end }}
{{- if and (hasKey $s "const") (ne (toJson $v) (toJson $s.const)) }}
{{- printf "%s: must be %s\n" $path (toJson $s.const) }}
{{- end }}
{{- if eq $kind "string" }}
{{- if and (hasKey $s "pattern") (not (regexMatch $s.pattern $v)) }}
{{- printf "%s: must match %s%s\n" $path $s.pattern (ne $here "" | ternary (printf " (%s)" $here) "") }}
{{- end }}
{{- if and (hasKey $s "minLength") (lt (len $v) (int $s.minLength)) }}
{{- printf "%s: must not be shorter than %v characters\n" $path $s.minLength }}
{{- end }}
{{- if and (hasKey $s "maxLength") (gt (len $v) (int $s.maxLength)) }}
{{- printf "%s: must not be longer than %v characters\n" $path $s.maxLength }}
{{- end }}
{{- end }}
{{- if or (eq $kind "integer") (eq $kind "number") }}
{{- $n := float64 $v }}
{{- if and (hasKey $s "minimum") (lt $n (float64 $s.minimum)) }}
{{- printf "%s: must be %v or more\n" $path $s.minimum }}
{{- end }}
{{- if and (hasKey $s "maximum") (gt $n (float64 $s.maximum)) }}
{{- printf "%s: must be %v or less\n" $path $s.maximum }}
{{- end }}
{{- if and (hasKey $s "exclusiveMinimum") (le $n (float64 $s.exclusiveMinimum)) }}
{{- printf "%s: must be more than %v\n" $path $s.exclusiveMinimum }}
{{- end }}
{{- if and (hasKey $s "exclusiveMaximum") (ge $n (float64 $s.exclusiveMaximum)) }}
{{- printf "%s: must be less than %v\n" $path $s.exclusiveMaximum }}
{{- end }}
{{- end }}
{{- if eq $kind "object" }}
{{- range $key := $s.required | default list }}
{{- if not (hasKey $v $key) }}
{{- printf "%s.%s: required\n" $path $key }}
{{- end }}
{{- end }}
{{- $props := $s.properties | default dict }}
{{- range $key := keys $v | sortAlpha }}
{{- $item := get $v $key }}
{{- $where := printf "%s.%s" $path $key }}
{{- if hasKey $props $key }}
{{- include "health-sidecar-lib.schemaErrors" (dict "schema" (get $props $key) "value" $item "path" $where "defs" $defs) }}
{{- else if kindIs "map" $s.additionalProperties }}
{{- include "health-sidecar-lib.schemaErrors" (dict "schema" $s.additionalProperties "value" $item "path" $where "defs" $defs) }}
{{- else if and (hasKey $s "additionalProperties") (not $s.additionalProperties) }}
{{- printf "%s: unknown key (known here: %s)\n" $where (keys $props | sortAlpha | join ", ") }}
{{- end }}
{{- with $s.propertyNames }}
{{- if and (hasKey . "enum") (not (has $key .enum)) }}
{{- printf "%s: not allowed here (allowed: %s)\n" $where (join ", " .enum) }}
{{- end }}
{{- if and (hasKey . "pattern") (not (regexMatch .pattern $key)) }}
{{- printf "%s: not a valid key here (keys must match %s)\n" $where .pattern }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if eq $kind "array" }}
{{- if and (hasKey $s "minItems") (lt (len $v) (int $s.minItems)) }}
{{- printf "%s: needs at least %v item(s)\n" $path $s.minItems }}
{{- end }}
{{- if and (hasKey $s "maxItems") (gt (len $v) (int $s.maxItems)) }}
{{- printf "%s: takes at most %v item(s)\n" $path $s.maxItems }}
{{- end }}
{{- if $s.uniqueItems }}
{{- $seen := dict }}
{{- range $v }}
{{- $id := toJson . | sha256sum }}
{{- if hasKey $seen $id }}
{{- printf "%s: holds an item twice\n" $path }}
{{- end }}
{{- $_ := set $seen $id true }}
{{- end }}
{{- end }}
{{- with $s.items }}
{{- range $i, $item := $v }}
{{- include "health-sidecar-lib.schemaErrors" (dict "schema" $.schema.items "value" $item "path" (printf "%s[%d]" $path $i) "defs" $defs) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $sub := $s.allOf | default list }}
{{- include "health-sidecar-lib.schemaErrors" (dict "schema" $sub "value" $v "path" $path "defs" $defs "hint" $here) }}
{{- end }}
{{- with $s.anyOf }}
{{- $passed := 0 }}
{{- range $sub := . }}
{{- if not (include "health-sidecar-lib.schemaErrors" (dict "schema" $sub "value" $v "path" $path "defs" $defs "hint" $here)) }}
{{- $passed = add1 $passed }}
{{- end }}
{{- end }}
{{- if eq $passed 0 }}
{{- include "health-sidecar-lib.bestAlternative" (dict "alternatives" . "value" $v "path" $path "defs" $defs "hint" $here) }}
{{- end }}
{{- end }}
{{- with $s.oneOf }}
{{- $passed := 0 }}
{{- range $sub := . }}
{{- if not (include "health-sidecar-lib.schemaErrors" (dict "schema" $sub "value" $v "path" $path "defs" $defs "hint" $here)) }}
{{- $passed = add1 $passed }}
{{- end }}
{{- end }}
{{- if eq $passed 0 }}
{{- include "health-sidecar-lib.bestAlternative" (dict "alternatives" . "value" $v "path" $path "defs" $defs "hint" $here) }}
{{- else if gt $passed 1 }}
{{- printf "%s: ambiguous: matches more than one of its forms\n" $path }}
{{- end }}
{{- end }}
{{- if hasKey $s "if" }}
{{- if not (include "health-sidecar-lib.schemaErrors" (dict "schema" (get $s "if") "value" $v "path" $path "defs" $defs "hint" $here)) }}
{{- with $s.then }}
{{- include "health-sidecar-lib.schemaErrors" (dict "schema" . "value" $v "path" $path "defs" $defs "hint" $here) }}
{{- end }}
{{- else }}
{{- with (get $s "else") }}
{{- include "health-sidecar-lib.schemaErrors" (dict "schema" . "value" $v "path" $path "defs" $defs "hint" $here) }}
{{- end }}
{{- end }}
{{- end }}
{{- with $s.not }}
{{- if not (include "health-sidecar-lib.schemaErrors" (dict "schema" . "value" $v "path" $path "defs" $defs "hint" $here)) }}
{{- if .required }}
{{- printf "%s: %s may not be set together\n" $path (join " and " .required) }}
{{- else if .pattern }}
{{- printf "%s: refused%s; the value is not shown\n" $path (ne $here "" | ternary (printf ", expected: %s" $here) "") }}
{{- else }}
{{- printf "%s: refused%s\n" $path (ne $here "" | ternary (printf ", expected: %s" $here) "") }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
None of a oneOf/anyOf's forms matched: the problems with the form of the value's own type (the
string form of a value that is a string), else a line naming the types accepted.
*/}}
{{- define "health-sidecar-lib.bestAlternative" -}}
{{- $kind := include "health-sidecar-lib.jsonType" .value }}
{{- $best := "" }}
{{- $types := list }}
{{- range $sub := .alternatives }}
{{- $t := $sub.type | default "" }}
{{- $types = append $types $t }}
{{- if and (not $best) (or (eq $t $kind) (and (eq $t "number") (eq $kind "integer"))) }}
{{- $best = include "health-sidecar-lib.schemaErrors" (dict "schema" $sub "value" $.value "path" $.path "defs" $.defs "hint" $.hint) }}
{{- end }}
{{- end }}
{{- if $best }}
{{- $best }}
{{- else }}
{{- printf "%s: must be %s\n" .path (without $types "" | join " or ") }}
{{- end }}
{{- end }}
