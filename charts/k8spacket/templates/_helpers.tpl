{{/*
Names and labels. Selector labels never carry the chart version (a DaemonSet's
selector is immutable: a version in it would break every upgrade).
*/}}
{{- define "k8spacket.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "k8spacket.fullname" -}}
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

{{- define "k8spacket.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "k8spacket.selectorLabels" -}}
app.kubernetes.io/name: {{ include "k8spacket.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "k8spacket.labels" -}}
helm.sh/chart: {{ include "k8spacket.chart" . }}
{{ include "k8spacket.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: k8spacket
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "k8spacket.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "k8spacket.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "k8spacket.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Namespace of the Grafana ConfigMaps (the sidecars search Grafana's own). */}}
{{- define "k8spacket.grafanaNamespace" -}}
{{- default .Release.Namespace .Values.grafana.namespace }}
{{- end }}

{{/* The agents' base URL inside the cluster (the Service). */}}
{{- define "k8spacket.serviceURL" -}}
{{- printf "http://%s.%s.svc.cluster.local:%v" (include "k8spacket.fullname" .) .Release.Namespace .Values.service.port }}
{{- end }}

{{/*
Whether the agent reads the kernel's connection tracking table (Service DNAT
pairing), which needs CAP_NET_ADMIN: config.capture.conntrack auto or "true".
*/}}
{{- define "k8spacket.conntrack" -}}
{{- if ne (toString .Values.config.capture.conntrack) "false" }}true{{ end }}
{{- end }}

{{/* The capabilities the agent uses: NET_RAW for packet sockets, NET_ADMIN for conntrack. */}}
{{- define "k8spacket.capabilities" -}}
{{- $caps := list "NET_RAW" }}
{{- if include "k8spacket.conntrack" . }}
{{- $caps = append $caps "NET_ADMIN" }}
{{- end }}
{{- range .Values.securityContext.capabilities.add }}
{{- $caps = append $caps . }}
{{- end }}
{{- toJson ($caps | uniq) }}
{{- end }}

{{/*
The interpreter the agent runs under: the image's copies of python carry file
capabilities (cap_net_raw, or cap_net_raw + cap_net_admin), which is what lets a
non-root user open packet sockets. A file capability that is not in the
container's bounding set makes exec fail, so the copy must match the
capabilities granted above.
*/}}
{{- define "k8spacket.interpreter" -}}
{{- if include "k8spacket.conntrack" . -}}
/opt/k8spacket/bin/k8spacket-python-conntrack
{{- else -}}
/opt/k8spacket/bin/k8spacket-python
{{- end }}
{{- end }}

{{/* Scrape configuration: exactly one of annotations, ServiceMonitor, PodMonitor. */}}
{{- define "k8spacket.scrapeAnnotations" -}}
{{- $a := .Values.prometheusAnnotations.enabled }}
{{- $monitor := or .Values.serviceMonitor.enabled .Values.podMonitor.enabled }}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled }}
{{- fail "serviceMonitor.enabled and podMonitor.enabled are both true: every series would be scraped twice (every sum() doubled); enable one" }}
{{- end }}
{{- if eq (toString $a) "auto" }}
{{- if not $monitor }}true{{ end }}
{{- else if $a }}
{{- if $monitor }}
{{- fail "prometheusAnnotations.enabled is true and a ServiceMonitor/PodMonitor is enabled: every series would be scraped twice; set prometheusAnnotations.enabled to auto or false" }}
{{- end }}true
{{- end }}
{{- end }}

{{/*
The agent's configuration file, in its own YAML tree: .Values.config as it is,
plus the seed's k8sPacket keys under their names in that tree. The listening
host is handed over as --listen (it may come from the downward API).
*/}}
{{- define "k8spacket.agentConfig" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $k := .Values.k8sPacket }}
{{- $capture := $cfg.capture | default dict }}
{{- $ifaces := $capture.interfaces | default dict }}
{{- $_ := set $ifaces "command" $k.tcp.listener.interfaces.command }}
{{- $_ := set $ifaces "refreshPeriod" $k.tcp.listener.interfaces.refreshPeriod }}
{{- $_ := set $capture "interfaces" $ifaces }}
{{- $_ := set $cfg "capture" $capture }}
{{- $tracker := $cfg.tracker | default dict }}
{{- $_ := set $tracker "flushPeriod" $k.tcp.assembler.flushing.periodDuration }}
{{- $_ := set $tracker "closeOlderThan" $k.tcp.assembler.flushing.closeOlderThanDuration }}
{{- $_ := set $cfg "tracker" $tracker }}
{{- $metrics := $cfg.metrics | default dict }}
{{- $_ := set $metrics "hideSourcePort" $k.metrics.hideSourcePort }}
{{- $_ := set $cfg "metrics" $metrics }}
{{- $enrich := $cfg.enrichment | default dict }}
{{- $geoip := $enrich.geoip | default dict }}
{{- $_ := set $geoip "dbPath" $k.metrics.reverseLookup.geoipDBPath }}
{{- $_ := set $geoip "asnDBPath" $k.metrics.reverseLookup.geoipASNDBPath }}
{{- $_ := set $enrich "geoip" $geoip }}
{{- $whois := $enrich.whois | default dict }}
{{- $_ := set $whois "regexp" $k.metrics.reverseLookup.whoisRegexp }}
{{- $_ := set $enrich "whois" $whois }}
{{- $_ := set $cfg "enrichment" $enrich }}
{{- $graph := $cfg.graph | default dict }}
{{- if not $graph.peerSelector }}
{{- $_ := set $graph "peerSelector" (printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s" (include "k8spacket.name" .) .Release.Name) }}
{{- end }}
{{- $_ := set $cfg "graph" $graph }}
{{- $http := omit ($cfg.http | default dict) "host" }}
{{- $_ := set $http "port" $k.tcp.listener.port }}
{{- $_ := set $cfg "http" $http }}
{{- toYaml $cfg }}
{{- end }}

{{/* HOST:PORT for --listen: config.http.host, or the node's address from the downward API. */}}
{{- define "k8spacket.listen" -}}
{{- $host := .Values.config.http.host | default "$(HOST_IP)" }}
{{- printf "%s:%v" $host .Values.k8sPacket.tcp.listener.port }}
{{- end }}
