{{/* Object names: <release>-<chart>, or the release name when it already holds the chart's. */}}
{{- define "df.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "df.manager" -}}{{ include "df.fullname" . }}-manager{{- end -}}
{{- define "df.scheduler" -}}{{ include "df.fullname" . }}-scheduler{{- end -}}
{{- define "df.seed" -}}{{ include "df.fullname" . }}-seed-client{{- end -}}
{{- define "df.client" -}}{{ include "df.fullname" . }}-client{{- end -}}
{{- define "df.joinSecret" -}}{{ default (printf "%s-join" (include "df.fullname" .)) .Values.security.existingSecret }}{{- end -}}

{{/* Labels; "component" is the one a component's selector adds. */}}
{{- define "df.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
{{- define "df.selector" -}}
app.kubernetes.io/name: {{ default .root.Chart.Name .root.Values.nameOverride }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "df.image" -}}
{{ .image.repository }}:{{ default .root.Chart.AppVersion .image.tag }}
{{- end -}}

{{/* The manager's gRPC as members in pods dial it (a name its certificate carries). */}}
{{- define "df.managerGrpc" -}}
{{ include "df.manager" . }}.{{ .Release.Namespace }}.svc:65003
{{- end -}}

{{/* The environment variable Kubernetes gives pods with the manager Service's cluster IP. */}}
{{- define "df.managerIpEnv" -}}
{{ include "df.manager" . | upper | replace "-" "_" }}_SERVICE_HOST
{{- end -}}

{{/* Replaced, when a container starts, by the manager Service's cluster IP (see the
manager's and the systemd-mode node's start scripts): for what cannot resolve cluster DNS
names (the node's host). */}}
{{- define "df.managerIpPlaceholder" -}}@MANAGER_SERVICE_IP@{{- end -}}

{{/* The schedulers' stable DNS names (StatefulSet pods behind the headless Service). */}}
{{- define "df.schedulerNames" -}}
{{- $names := list -}}
{{- range $i := until (int .Values.scheduler.replicas) -}}
{{- $names = append $names (printf "%s-%d.%s.%s.svc:8002" (include "df.scheduler" $) $i (include "df.scheduler" $) $.Release.Namespace) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* The `p2p` and `security` sections of a daemon config. Args: root, role (seed|peer),
manager (the address it dials the manager at), dns (whether it resolves cluster DNS names),
dir (its state dir).
Schedulers: their stable DNS names when the daemon resolves them and runs in the clear;
otherwise none, and the daemon asks the manager, which lists the schedulers' pod IPs: a
scheduler's certificate names its IP, not its DNS name, and the node's host resolves no
cluster names. */}}
{{- define "df.daemonSections" -}}
{{- $v := .root.Values -}}
{{- $schedulers := list -}}
{{- if and .dns (not $v.security.enabled) -}}
{{- $schedulers = include "df.schedulerNames" .root | fromJsonArray -}}
{{- end -}}
{{- $p2p := dict "schedulers" $schedulers "listen" "0.0.0.0:4000" "manager" .manager -}}
{{- if eq .role "seed" -}}{{- $_ := set $p2p "seed_peer" true -}}{{- end -}}
{{- $out := dict "p2p" $p2p -}}
{{- if $v.security.enabled -}}
{{- $join := dict "manager" .manager "token_file" (printf "/etc/dragonfly/join/%s" .role) -}}
{{- $_ := set $out "security" (dict "join" $join "dir" (printf "%s/credentials" .dir)) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* A volume with the join token of one role only, mounted at /etc/dragonfly/join/<role>. */}}
{{- define "df.joinVolume" -}}
- name: join
  secret:
    secretName: {{ include "df.joinSecret" .root }}
    defaultMode: 0400
    items:
      - key: {{ .role }}
        path: {{ .role }}
{{- end -}}
