{{- /*
The umbrella's Redis helpers (they read .Values.redis, which only the umbrella has, so they
live here rather than in cryptex-lib). connections.yaml and redis.yaml are their only users.
*/}}

{{/* <release>-redis: the standalone StatefulSet and its Service. */}}
{{- define "cryptex.redis.name" -}}
{{- printf "%s-redis" (include "cryptex.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-redis-cluster: the cluster's StatefulSet and its headless Service. */}}
{{- define "cryptex.redis.clusterName" -}}
{{- printf "%s-redis-cluster" (include "cryptex.fullname" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/*
The stable DNS name of cluster pod number .index (root context in .ctx):
<statefulset>-<i>.<headless service>.<namespace>.svc, which the pod also announces to clients
(--cluster-announce-hostname), so the seed list and the cluster's redirections agree.
*/}}
{{- define "cryptex.redis.clusterHost" -}}
{{- $name := include "cryptex.redis.clusterName" .ctx -}}
{{- printf "%s-%d.%s.%s.svc" $name (int .index) $name .ctx.Release.Namespace -}}
{{- end -}}

{{/* Fails the render unless nodes = primaries x (replicas + 1) with at least 3 primaries. */}}
{{- define "cryptex.redis.validateCluster" -}}
{{- $c := .Values.redis.cluster -}}
{{- $nodes := int $c.nodes -}}
{{- $group := add1 (int $c.replicas) -}}
{{- if or (ne (mod $nodes $group) 0) (lt (div $nodes $group) 3) -}}
{{- fail (printf "redis.mode=cluster: redis.cluster.nodes (%d) must be a multiple of redis.cluster.replicas+1 (%d) giving at least 3 primaries (e.g. %d)" $nodes $group (mul 3 $group)) -}}
{{- end -}}
{{- end -}}

{{/*
CRYPTEX_REDIS_URL, decided here and nowhere else (connections.yaml puts it in the Secret every
component reads): externalRedis.url when redis.enabled=false (any scheme the services accept,
redis+cluster:// included); the standalone Service; or, in cluster mode, the first three pods
as redis-py cluster seed nodes (the client learns the rest from CLUSTER SLOTS). Empty when
nothing is set (the caller's `required` says what is missing).
*/}}
{{- define "cryptex.redis.url" -}}
{{- if not .Values.redis.enabled -}}
{{- .Values.externalRedis.url -}}
{{- else if eq (.Values.redis.mode | default "standalone") "cluster" -}}
{{- include "cryptex.redis.validateCluster" . -}}
{{- $seeds := list -}}
{{- range $i := until 3 -}}
{{- $seeds = append $seeds (printf "%s:6379" (include "cryptex.redis.clusterHost" (dict "ctx" $ "index" $i))) -}}
{{- end -}}
{{- printf "redis+cluster://%s/" (join "," $seeds) -}}
{{- else -}}
{{- printf "redis://%s:6379/0" (include "cryptex.redis.name" .) -}}
{{- end -}}
{{- end -}}

{{/*
cryptex.labels with app.kubernetes.io/component set to .component (root context in .ctx):
one key each, where appending the component after cryptex.labels would repeat the key (which
Helm tolerates but stricter YAML decoders, e.g. Flux's post-renderer, refuse).
*/}}
{{- define "cryptex.redis.labels" -}}
{{- $labels := include "cryptex.labels" .ctx | fromYaml -}}
{{- $_ := set $labels "app.kubernetes.io/component" .component -}}
{{- toYaml $labels -}}
{{- end -}}
