{{/*
Defaults and derived settings are computed here, once; the templates only lay them out.
*/}}

{{- define "stockflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stockflow.fullname" -}}
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

{{- define "stockflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stockflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stockflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "stockflow.labels" -}}
helm.sh/chart: {{ include "stockflow.chart" . }}
{{ include "stockflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stockflow
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component. Call with (dict "root" $ "component" "stock-worker"). */}}
{{- define "stockflow.componentSelectorLabels" -}}
{{ include "stockflow.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "stockflow.componentLabels" -}}
{{ include "stockflow.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "stockflow.image" -}}
{{- with .Values.image }}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (.tag | default $.Chart.AppVersion | toString) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stockflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stockflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where secret files (creds, CA bundles) are mounted. */}}
{{- define "stockflow.secretDir" -}}/etc/stockflow/secrets{{- end }}

{{/* The Secret created from values, and its copy that exists while the pre-install hook runs. */}}
{{- define "stockflow.secretName" -}}{{ include "stockflow.fullname" . }}{{- end }}
{{- define "stockflow.setupSecretName" -}}{{ include "stockflow.fullname" . }}-setup{{- end }}

{{/*
Gateway bearer tokens the chart generates when neither gateway.auth.tokens nor existingSecret is
set, as the plain-text data of their Secret: {write-token, read-token, gateway-tokens: "write:<w>,read:<r>"}.
An installed Secret of that name keeps its tokens across upgrades (`lookup` finds nothing under
`helm template` or a client-side dry run: then new ones). Computed once per render and kept on the
root context, so the Secret and the checksum that rolls the pods agree.
*/}}
{{- define "stockflow.gatewayTokensSecretName" -}}{{ include "stockflow.fullname" . }}-gateway-tokens{{- end }}

{{- define "stockflow.gatewayGeneratedTokens" -}}
{{- if not (hasKey . "stockflowGatewayTokens") }}
{{- $installed := lookup "v1" "Secret" .Release.Namespace (include "stockflow.gatewayTokensSecretName" .) }}
{{- $tokens := include "stockflow.gatewayTokensKeptOrNew" (dig "data" dict $installed) | fromYaml }}
{{- $_ := set . "stockflowGatewayTokens" $tokens }}
{{- end }}
{{- toYaml (index . "stockflowGatewayTokens") }}
{{- end }}

{{/* The tokens in an installed Secret's data (base64, as `lookup` returns it), new random ones when it has none. */}}
{{- define "stockflow.gatewayTokensKeptOrNew" -}}
{{- $write := index . "write-token" | default "" | b64dec }}
{{- $read := index . "read-token" | default "" | b64dec }}
{{- if not (and $write $read) }}
{{- /* 40 alphanumerics from a cryptographic source: about 238 bits, valid for the gateway's parser. */}}
{{- $write = randAlphaNum 40 }}
{{- $read = randAlphaNum 40 }}
{{- end }}
{{- toYaml (dict "write-token" $write "read-token" $read "gateway-tokens" (printf "write:%s,read:%s" $write $read)) }}
{{- end }}

{{/*
Cross-field checks that a JSON schema cannot state readably. Rendered by configmap.yaml.
*/}}
{{- define "stockflow.validate" -}}
{{- $v := .Values }}
{{- if ge (int $v.config.shutdownTimeoutSeconds) (int $v.terminationGracePeriodSeconds) }}
{{- fail "config.shutdownTimeoutSeconds must stay below terminationGracePeriodSeconds, or pods are killed mid-shutdown" }}
{{- end }}
{{- with $v.nats.auth }}
{{- if and (eq .method "userPassword") (not .user) }}
{{- fail "nats.auth.method=userPassword needs nats.auth.user" }}
{{- end }}
{{- if and (eq .method "userPassword") (not .existingSecret) (not .password) }}
{{- fail "nats.auth.method=userPassword needs nats.auth.password or nats.auth.existingSecret" }}
{{- end }}
{{- if and (eq .method "token") (not .existingSecret) (not .token) }}
{{- fail "nats.auth.method=token needs nats.auth.token or nats.auth.existingSecret" }}
{{- end }}
{{- if and (eq .method "creds") (not .existingSecret) (not .creds) }}
{{- fail "nats.auth.method=creds needs nats.auth.creds or nats.auth.existingSecret" }}
{{- end }}
{{- if and (eq .method "nkey") (not .existingSecret) (not .nkeySeed) }}
{{- fail "nats.auth.method=nkey needs nats.auth.nkeySeed or nats.auth.existingSecret" }}
{{- end }}
{{- end }}
{{- range $backend := list "nats" "redis" }}
{{- $tls := (index $v $backend).tls }}
{{- with $tls.clientCert }}
{{- if and (not .existingSecret) (ne (empty .cert) (empty .key)) }}
{{- fail (printf "%s.tls.clientCert needs both cert and key (or existingSecret)" $backend) }}
{{- end }}
{{- if and (or .existingSecret .cert) (not $tls.enabled) }}
{{- fail (printf "%s.tls.clientCert needs %s.tls.enabled" $backend $backend) }}
{{- end }}
{{- end }}
{{- end }}
{{- with $v.nats.tls }}
{{- if and .enabled (not .ca) (not .existingSecret) (not (hasPrefix "tls://" $v.nats.url)) }}
{{- fail "nats.tls.enabled without a CA (nats.tls.ca or nats.tls.existingSecret) needs tls:// URLs in nats.url" }}
{{- end }}
{{- end }}
{{- range $seed := splitList "," $v.redis.url }}
{{- if and $v.redis.tls.enabled (not (hasPrefix "rediss://" $seed)) }}
{{- fail "redis.tls.enabled needs rediss:// URLs in redis.url" }}
{{- end }}
{{- end }}
{{- if and (contains "," $v.redis.url) (not $v.redis.cluster) }}
{{- fail "several URLs in redis.url are the seed nodes of a Redis Cluster: set redis.cluster=true" }}
{{- end }}
{{- if and $v.redis.auth.enabled (not $v.redis.auth.existingSecret) (not $v.redis.auth.password) }}
{{- fail "redis.auth.enabled needs redis.auth.password or redis.auth.existingSecret" }}
{{- end }}
{{- with $v.gateway.auth }}
{{- if and (eq .method "none") (or .tokens .existingSecret) }}
{{- fail "gateway.auth.method=none serves without tokens: leave gateway.auth.tokens and gateway.auth.existingSecret empty (the gateway refuses both at once)" }}
{{- end }}
{{- end }}
{{- $authSetByHand := hasKey $v.config.extra "STOCKFLOW_GATEWAY_AUTH" }}
{{- range $e := $v.gateway.env }}
{{- $authSetByHand = or $authSetByHand (eq $e.name "STOCKFLOW_GATEWAY_AUTH") }}
{{- end }}
{{- if $authSetByHand }}
{{- fail "set gateway.auth.method rather than STOCKFLOW_GATEWAY_AUTH: the chart gives the gateway tokens unless gateway.auth.method=none" }}
{{- end }}
{{- /* The gateway refuses to start without tokens, and with both STOCKFLOW_GATEWAY_TOKENS and
_FILE: the chart sets the first from gateway.auth, so neither may be set by hand. */}}
{{- range $var := list "STOCKFLOW_GATEWAY_TOKENS" "STOCKFLOW_GATEWAY_TOKENS_FILE" }}
{{- if hasKey $v.config.extra $var }}
{{- fail (printf "config.extra.%s: give the gateway's tokens in gateway.auth.tokens or gateway.auth.existingSecret (the chart sets STOCKFLOW_GATEWAY_TOKENS from them)" $var) }}
{{- end }}
{{- range $e := $v.gateway.env }}
{{- if eq $e.name $var }}
{{- fail (printf "gateway.env %s: give the gateway's tokens in gateway.auth.tokens or gateway.auth.existingSecret (the chart sets STOCKFLOW_GATEWAY_TOKENS from them)" $var) }}
{{- end }}
{{- end }}
{{- end }}
{{- with $v.gateway.auth }}
{{- if and $v.gateway.enabled (eq .method "tokens") .existingSecret }}
{{- include "stockflow.checkGatewayTokensSecret" (dict "auth" . "found" (lookup "v1" "Secret" $.Release.Namespace .existingSecret)) }}
{{- end }}
{{- end }}
{{- range $c := (include "stockflow.components" . | fromYaml).items }}
{{- with $c.values.autoscaling }}
{{- if and .enabled (gt (int .minReplicas) (int .maxReplicas)) }}
{{- fail (printf "%s: autoscaling.minReplicas must not exceed autoscaling.maxReplicas" $c.component) }}
{{- end }}
{{- if and .enabled (eq $c.autoscaler "hpa") (lt (int .minReplicas) 1) }}
{{- fail (printf "%s: a CPU HorizontalPodAutoscaler needs autoscaling.minReplicas >= 1 (0 works only with KEDA)" $c.component) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Fails when the Secret gateway.auth.existingSecret names, as the cluster has it (`lookup` finds
nothing under `helm template`: then nothing is checked), holds no token entry under
gateway.auth.existingSecretKey: the gateway would refuse to start. Call with
(dict "auth" .Values.gateway.auth "found" <the looked-up Secret or an empty dict>).
*/}}
{{- define "stockflow.checkGatewayTokensSecret" -}}
{{- if .found }}
{{- $text := dig "data" .auth.existingSecretKey "" .found | b64dec }}
{{- $entries := list }}
{{- range $line := regexSplit "[,\n]" $text -1 }}
{{- $line = trim $line }}
{{- if and $line (not (hasPrefix "#" $line)) }}
{{- $entries = append $entries $line }}
{{- end }}
{{- end }}
{{- if not $entries }}
{{- fail (printf "gateway.auth.existingSecret: the Secret %s holds no tokens under gateway.auth.existingSecretKey=%s, and the gateway refuses to start without one; put scope:token entries there, or leave gateway.auth.existingSecret empty to give gateway.auth.tokens or have tokens generated" .auth.existingSecret .auth.existingSecretKey) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The workloads, in a fixed order, with how each one scales:
  {items: [{key, component, kind: worker|gateway, autoscaler: keda|hpa|none, values}]}
*/}}
{{- define "stockflow.components" -}}
{{- $items := list }}
{{- range $key := list "stock" "order" "notify" }}
{{- $w := index $.Values.workers $key }}
{{- if $w.enabled }}
{{- $scaler := "none" }}
{{- if $w.autoscaling.enabled }}
{{- $scaler = ternary "keda" "hpa" $.Values.keda.enabled }}
{{- end }}
{{- $items = append $items (dict "key" $key "component" $w.binary "kind" "worker" "autoscaler" $scaler "values" $w) }}
{{- end }}
{{- end }}
{{- with .Values.gateway }}
{{- if .enabled }}
{{- $items = append $items (dict "key" "gateway" "component" .binary "kind" "gateway" "autoscaler" (ternary "hpa" "none" .autoscaling.enabled) "values" .) }}
{{- end }}
{{- end }}
{{- toYaml (dict "items" $items) }}
{{- end }}

{{/*
Secret material, from values, existing Secrets or generated:
  data:   keys of the Secret the chart creates (empty when everything comes from existing Secrets)
  generated: keys of the Secret of generated gateway tokens (empty unless the chart generates them)
  env:    [{name, secret, key, only}]  secret "" = the chart's Secret; only = components that get it ([] = all)
  files:  [{secret, key, path}]        projected into stockflow.secretDir
  config: non-secret variables that go with them (paths of the mounted files)
*/}}
{{- define "stockflow.secrets" -}}
{{- $v := .Values }}
{{- $dir := include "stockflow.secretDir" . }}
{{- $data := dict }}
{{- $env := list }}
{{- $files := list }}
{{- $config := dict }}
{{- $generated := dict }}
{{- /* NATS */}}
{{- with $v.nats.auth }}
{{- if eq .method "userPassword" }}
{{- if .existingSecret }}
{{- $env = append $env (dict "name" "STOCKFLOW_NATS_PASSWORD" "secret" .existingSecret "key" .existingSecretKeys.password "only" (list)) }}
{{- else }}
{{- $_ := set $data "STOCKFLOW_NATS_PASSWORD" .password }}
{{- $env = append $env (dict "name" "STOCKFLOW_NATS_PASSWORD" "secret" "" "key" "STOCKFLOW_NATS_PASSWORD" "only" (list)) }}
{{- end }}
{{- else if eq .method "token" }}
{{- if .existingSecret }}
{{- $env = append $env (dict "name" "STOCKFLOW_NATS_TOKEN" "secret" .existingSecret "key" .existingSecretKeys.token "only" (list)) }}
{{- else }}
{{- $_ := set $data "STOCKFLOW_NATS_TOKEN" .token }}
{{- $env = append $env (dict "name" "STOCKFLOW_NATS_TOKEN" "secret" "" "key" "STOCKFLOW_NATS_TOKEN" "only" (list)) }}
{{- end }}
{{- else if eq .method "nkey" }}
{{- if .existingSecret }}
{{- $files = append $files (dict "secret" .existingSecret "key" .existingSecretKeys.nkeySeed "path" "nats.nkey") }}
{{- else }}
{{- $_ := set $data "nats.nkey" .nkeySeed }}
{{- $files = append $files (dict "secret" "" "key" "nats.nkey" "path" "nats.nkey") }}
{{- end }}
{{- $_ := set $config "STOCKFLOW_NATS_NKEY_FILE" (printf "%s/nats.nkey" $dir) }}
{{- else if eq .method "creds" }}
{{- if .existingSecret }}
{{- $files = append $files (dict "secret" .existingSecret "key" .existingSecretKeys.creds "path" "nats.creds") }}
{{- else }}
{{- $_ := set $data "nats.creds" .creds }}
{{- $files = append $files (dict "secret" "" "key" "nats.creds" "path" "nats.creds") }}
{{- end }}
{{- $_ := set $config "STOCKFLOW_NATS_CREDS_FILE" (printf "%s/nats.creds" $dir) }}
{{- end }}
{{- end }}
{{- with $v.nats.tls }}
{{- if and .enabled (or .ca .existingSecret) }}
{{- if .existingSecret }}
{{- $files = append $files (dict "secret" .existingSecret "key" .existingSecretKey "path" "nats-ca.crt") }}
{{- else }}
{{- $_ := set $data "nats-ca.crt" .ca }}
{{- $files = append $files (dict "secret" "" "key" "nats-ca.crt" "path" "nats-ca.crt") }}
{{- end }}
{{- $_ := set $config "STOCKFLOW_NATS_TLS_CA_FILE" (printf "%s/nats-ca.crt" $dir) }}
{{- end }}
{{- with .clientCert }}
{{- if and $v.nats.tls.enabled (or .existingSecret .cert) }}
{{- if .existingSecret }}
{{- $files = append $files (dict "secret" .existingSecret "key" .existingSecretKeys.cert "path" "nats-client.crt") }}
{{- $files = append $files (dict "secret" .existingSecret "key" .existingSecretKeys.key "path" "nats-client.key") }}
{{- else }}
{{- $_ := set $data "nats-client.crt" .cert }}
{{- $_ := set $data "nats-client.key" .key }}
{{- $files = append $files (dict "secret" "" "key" "nats-client.crt" "path" "nats-client.crt") }}
{{- $files = append $files (dict "secret" "" "key" "nats-client.key" "path" "nats-client.key") }}
{{- end }}
{{- $_ := set $config "STOCKFLOW_NATS_TLS_CERT_FILE" (printf "%s/nats-client.crt" $dir) }}
{{- $_ := set $config "STOCKFLOW_NATS_TLS_KEY_FILE" (printf "%s/nats-client.key" $dir) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Redis */}}
{{- with $v.redis.auth }}
{{- if .enabled }}
{{- if .existingSecret }}
{{- $env = append $env (dict "name" "STOCKFLOW_REDIS_PASSWORD" "secret" .existingSecret "key" .existingSecretKey "only" (list)) }}
{{- else }}
{{- $_ := set $data "STOCKFLOW_REDIS_PASSWORD" .password }}
{{- $env = append $env (dict "name" "STOCKFLOW_REDIS_PASSWORD" "secret" "" "key" "STOCKFLOW_REDIS_PASSWORD" "only" (list)) }}
{{- end }}
{{- end }}
{{- end }}
{{- with $v.redis.tls }}
{{- if and .enabled (or .ca .existingSecret) }}
{{- if .existingSecret }}
{{- $files = append $files (dict "secret" .existingSecret "key" .existingSecretKey "path" "redis-ca.crt") }}
{{- else }}
{{- $_ := set $data "redis-ca.crt" .ca }}
{{- $files = append $files (dict "secret" "" "key" "redis-ca.crt" "path" "redis-ca.crt") }}
{{- end }}
{{- $_ := set $config "STOCKFLOW_REDIS_TLS_CA_FILE" (printf "%s/redis-ca.crt" $dir) }}
{{- end }}
{{- with .clientCert }}
{{- if and $v.redis.tls.enabled (or .existingSecret .cert) }}
{{- if .existingSecret }}
{{- $files = append $files (dict "secret" .existingSecret "key" .existingSecretKeys.cert "path" "redis-client.crt") }}
{{- $files = append $files (dict "secret" .existingSecret "key" .existingSecretKeys.key "path" "redis-client.key") }}
{{- else }}
{{- $_ := set $data "redis-client.crt" .cert }}
{{- $_ := set $data "redis-client.key" .key }}
{{- $files = append $files (dict "secret" "" "key" "redis-client.crt" "path" "redis-client.crt") }}
{{- $files = append $files (dict "secret" "" "key" "redis-client.key" "path" "redis-client.key") }}
{{- end }}
{{- $_ := set $config "STOCKFLOW_REDIS_TLS_CERT_FILE" (printf "%s/redis-client.crt" $dir) }}
{{- $_ := set $config "STOCKFLOW_REDIS_TLS_KEY_FILE" (printf "%s/redis-client.key" $dir) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Gateway bearer tokens: an existing Secret, the given ones, or generated ones */}}
{{- with $v.gateway.auth }}
{{- if or (not $v.gateway.enabled) (eq .method "none") }}
{{- else if .existingSecret }}
{{- $env = append $env (dict "name" "STOCKFLOW_GATEWAY_TOKENS" "secret" .existingSecret "key" .existingSecretKey "only" (list $v.gateway.binary)) }}
{{- else if .tokens }}
{{- $_ := set $data "STOCKFLOW_GATEWAY_TOKENS" (join "," .tokens) }}
{{- $env = append $env (dict "name" "STOCKFLOW_GATEWAY_TOKENS" "secret" "" "key" "STOCKFLOW_GATEWAY_TOKENS" "only" (list $v.gateway.binary)) }}
{{- else }}
{{- $generated = include "stockflow.gatewayGeneratedTokens" $ | fromYaml }}
{{- $env = append $env (dict "name" "STOCKFLOW_GATEWAY_TOKENS" "secret" (include "stockflow.gatewayTokensSecretName" $) "key" "gateway-tokens" "only" (list $v.gateway.binary)) }}
{{- end }}
{{- end }}
{{- /* Webhook signing secret */}}
{{- with $v.workers.notify.webhooks }}
{{- if .existingSecret }}
{{- $env = append $env (dict "name" "STOCKFLOW_WEBHOOK_SECRET" "secret" .existingSecret "key" .existingSecretKey "only" (list $v.workers.notify.binary)) }}
{{- else if .secret }}
{{- $_ := set $data "STOCKFLOW_WEBHOOK_SECRET" .secret }}
{{- $env = append $env (dict "name" "STOCKFLOW_WEBHOOK_SECRET" "secret" "" "key" "STOCKFLOW_WEBHOOK_SECRET" "only" (list $v.workers.notify.binary)) }}
{{- end }}
{{- end }}
{{- toYaml (dict "data" $data "generated" $generated "env" $env "files" $files "config" $config) }}
{{- end }}

{{/*
The durable consumers a worker's autoscaler reads: its `consumers`, with the stock input's
(STOCK_EVENTS) and the ledger's (STOCK_CHANGES) once per partition stream STOCK_EVENTS_<p> /
STOCK_CHANGES_<p> when nats.stockPartitions > 1.
Call with (dict "root" $ "consumers" list); renders {items: [{stream, consumer}]}.
*/}}
{{- define "stockflow.scaledConsumers" -}}
{{- $partitions := int .root.Values.nats.stockPartitions }}
{{- $items := list }}
{{- range $c := .consumers }}
{{- if and (has $c.stream (list "STOCK_EVENTS" "STOCK_CHANGES")) (gt $partitions 1) }}
{{- range $p := until $partitions }}
{{- $items = append $items (dict "stream" (printf "%s_%d" $c.stream $p) "consumer" $c.consumer) }}
{{- end }}
{{- else }}
{{- $items = append $items (dict "stream" $c.stream "consumer" $c.consumer) }}
{{- end }}
{{- end }}
{{- toYaml (dict "items" $items) }}
{{- end }}

{{/* Non-secret environment shared by every process: the ConfigMap's data. */}}
{{- define "stockflow.configData" -}}
{{- $v := .Values }}
{{- $cfg := dict
  "STOCKFLOW_NATS_URL" $v.nats.url
  "STOCKFLOW_STREAM_REPLICAS" ($v.nats.streamReplicas | int64)
  "STOCKFLOW_REDIS_URL" $v.redis.url
  "STOCKFLOW_REDIS_CLUSTER" ($v.redis.cluster | default false)
  "STOCKFLOW_KEY_PREFIX" $v.redis.keyPrefix
  "STOCKFLOW_REDIS_WAIT_REPLICAS" ($v.redis.waitReplicas | int64)
  "STOCKFLOW_REDIS_WAIT_TIMEOUT_MILLIS" ($v.redis.waitTimeoutMillis | int64)
  "STOCKFLOW_METRICS_ADDR" (printf "0.0.0.0:%d" (int $v.ports.metrics))
  "STOCKFLOW_HTTP_ADDR" (printf "0.0.0.0:%d" (int $v.ports.http))
  "STOCKFLOW_MAX_IN_FLIGHT" ($v.config.maxInFlight | int64)
  "STOCKFLOW_DEDUP_TTL_SECONDS" ($v.config.dedupTtlSeconds | int64)
  "STOCKFLOW_ORDER_RETENTION_SECONDS" ($v.config.orderRetentionSeconds | int64)
  "STOCKFLOW_SHUTDOWN_TIMEOUT_SECONDS" ($v.config.shutdownTimeoutSeconds | int64)
  "STOCKFLOW_STARTUP_TIMEOUT_SECONDS" ($v.config.startupTimeoutSeconds | default 0 | int64)
  "STOCKFLOW_LOG" $v.config.log
  "STOCKFLOW_LOG_FORMAT" $v.config.logFormat
}}
{{- if gt (int $v.nats.stockPartitions) 1 }}
{{- $_ := set $cfg "STOCKFLOW_STOCK_PARTITIONS" ($v.nats.stockPartitions | int64) }}
{{- end }}
{{- if eq $v.nats.auth.method "userPassword" }}
{{- $_ := set $cfg "STOCKFLOW_NATS_USER" $v.nats.auth.user }}
{{- end }}
{{- if and $v.redis.auth.enabled $v.redis.auth.username }}
{{- $_ := set $cfg "STOCKFLOW_REDIS_USERNAME" $v.redis.auth.username }}
{{- end }}
{{- $cfg = merge $cfg (include "stockflow.secrets" . | fromYaml).config }}
{{- range $k, $val := $v.config.extra }}
{{- $_ := set $cfg $k $val }}
{{- end }}
{{- range $k := keys $cfg | sortAlpha }}
{{ $k }}: {{ index $cfg $k | toString | quote }}
{{- end }}
{{- end }}

{{/* Rolls every pod when the ConfigMap or the chart's Secret changes. */}}
{{- define "stockflow.configChecksum" -}}
{{- $secrets := include "stockflow.secrets" . | fromYaml }}
{{- printf "%s\n%s" (include "stockflow.configData" .) (toYaml $secrets) | sha256sum }}
{{- end }}

{{/*
Environment from secrets for one process, as an EnvVar list.
Call with (dict "root" $ "component" "gateway" "secretName" <name of the chart's Secret>).
*/}}
{{- define "stockflow.secretEnv" -}}
{{- $secrets := include "stockflow.secrets" .root | fromYaml }}
{{- range $e := $secrets.env }}
{{- if or (not $e.only) (has $.component $e.only) }}
- name: {{ $e.name }}
  valueFrom:
    secretKeyRef:
      name: {{ $e.secret | default $.secretName }}
      key: {{ $e.key | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The projected volume of secret files, or nothing.
Call with (dict "root" $ "secretName" <name of the chart's Secret>).
*/}}
{{- define "stockflow.secretVolume" -}}
{{- $secrets := include "stockflow.secrets" .root | fromYaml }}
{{- if $secrets.files }}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      {{- range $f := $secrets.files }}
      - secret:
          name: {{ $f.secret | default $.secretName }}
          items:
            - key: {{ $f.key | quote }}
              path: {{ $f.path }}
      {{- end }}
{{- end }}
{{- end }}

{{/*
The pod spec shared by the workloads, the setup Job and the test Pod.
Call with (dict "root" $ "component" <name> "command" <list> "resources" <map>
  "env" <EnvVar list> "envFromConfigMap" <bool> "secretName" <name> "ports" <list>
  "probes" <bool> "topologySpreadConstraints" <list> "restartPolicy" <string or "">
  "serviceAccountName" <name or "">); optional keys may be left out.
*/}}
{{- define "stockflow.podSpec" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $secretVolume := include "stockflow.secretVolume" (dict "root" $root "secretName" .secretName) }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ .serviceAccountName | default (include "stockflow.serviceAccountName" $root) }}
automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .restartPolicy }}
restartPolicy: {{ . }}
{{- end }}
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
containers:
  - name: {{ .component }}
    image: {{ include "stockflow.image" $root }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    command:
      {{- toYaml .command | nindent 6 }}
    securityContext:
      {{- toYaml $v.securityContext | nindent 6 }}
    {{- with .ports }}
    ports:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- if .envFromConfigMap }}
    envFrom:
      - configMapRef:
          name: {{ include "stockflow.fullname" $root }}
    {{- end }}
    {{- $env := include "stockflow.secretEnv" (dict "root" $root "component" .component "secretName" .secretName) | fromYamlArray }}
    {{- $env = concat $env (.env | default list) }}
    {{- with $env }}
    env:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- if .probes }}
    {{- with $v.probes }}
    startupProbe:
      httpGet: {path: {{ .startup.path }}, port: metrics}
      periodSeconds: {{ .startup.periodSeconds }}
      timeoutSeconds: {{ .startup.timeoutSeconds }}
      failureThreshold: {{ .startup.failureThreshold }}
    readinessProbe:
      httpGet: {path: {{ .readiness.path }}, port: metrics}
      periodSeconds: {{ .readiness.periodSeconds }}
      timeoutSeconds: {{ .readiness.timeoutSeconds }}
      failureThreshold: {{ .readiness.failureThreshold }}
    livenessProbe:
      httpGet: {path: {{ .liveness.path }}, port: metrics}
      periodSeconds: {{ .liveness.periodSeconds }}
      timeoutSeconds: {{ .liveness.timeoutSeconds }}
      failureThreshold: {{ .liveness.failureThreshold }}
    {{- end }}
    {{- end }}
    {{- with .resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    volumeMounts:
      - {name: tmp, mountPath: /tmp}
      {{- if $secretVolume }}
      - {name: secrets, mountPath: {{ include "stockflow.secretDir" $root }}, readOnly: true}
      {{- end }}
      {{- with .extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: tmp
    emptyDir: {sizeLimit: 64Mi}
  {{- with $secretVolume }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with .extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Where the notify worker reads its webhook subscriptions. */}}
{{- define "stockflow.webhooksDir" -}}/etc/stockflow/webhooks{{- end }}
{{- define "stockflow.webhooksConfigMap" -}}{{ include "stockflow.fullname" . }}-webhooks{{- end }}

{{/* The subscriptions file's content (JSON); its checksum rolls the notify pods. */}}
{{- define "stockflow.webhooksFile" -}}
{{- toJson (dict "subscriptions" (.Values.workers.notify.webhooks.subscriptions | default list)) }}
{{- end }}

{{/* The configuration as an EnvVar list, for the pre-install hook (the ConfigMap does not exist yet). */}}
{{- define "stockflow.configEnv" -}}
{{- range $k, $val := include "stockflow.configData" . | fromYaml }}
- name: {{ $k }}
  value: {{ $val | quote }}
{{- end }}
{{- end }}

{{/* The NATS monitoring endpoint KEDA polls. */}}
{{- define "stockflow.natsMonitoringEndpoint" -}}
{{- .Values.keda.natsMonitoringEndpoint | default (printf "nats-headless.%s.svc.cluster.local:8222" .Release.Namespace) }}
{{- end }}
