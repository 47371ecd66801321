{{/* Names ----------------------------------------------------------------------- */}}
{{- define "taskflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "taskflow.fullname" -}}
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

{{/* "<fullname>-<suffix>", kept within the 63 characters of a DNS label. */}}
{{- define "taskflow.component" -}}
{{- $root := index . 0 }}{{- $suffix := index . 1 }}
{{- $base := include "taskflow.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{- define "taskflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: call with (list $ "component"). ---------------------------------------- */}}
{{- define "taskflow.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "taskflow.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- if gt (len .) 2 }}
taskflow.io/pool: {{ index . 2 }}
{{- end }}
{{- end }}

{{- define "taskflow.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "taskflow.chart" $root }}
{{ include "taskflow.selectorLabels" . }}
app.kubernetes.io/version: {{ include "taskflow.imageTag" $root | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: taskflow
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The one image every role runs. ------------------------------------------------ */}}
{{- define "taskflow.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "taskflow.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "taskflow.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "taskflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "taskflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "taskflow.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "taskflow.fullname" .) }}
{{- end }}

{{/* Settings and secrets as environment: call with (list $ "role"). ------------------ */}}
{{- define "taskflow.env" -}}
{{- $root := index . 0 }}{{- $role := index . 1 }}
{{- $v := $root.Values -}}
- name: TASKFLOW_ENV
  value: {{ $v.environment | quote }}
- name: TASKFLOW_SETTINGS_FILES
  value: /etc/taskflow/settings.yaml
{{- if $v.ssm.path }}
- name: TASKFLOW_SSM_PATH
  value: {{ $v.ssm.path | quote }}
{{- with $v.ssm.region }}
- name: TASKFLOW_SSM_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $v.ssm.endpointUrl }}
- name: TASKFLOW_SSM_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- $keys := $v.secrets.keys }}
{{- $secret := include "taskflow.secretName" $root }}
{{- if and (eq $role "migrate-hook") $v.secrets.create }}
{{- /* Before install the release's Secret does not exist yet: the hook has its own. */}}
{{- $secret = include "taskflow.component" (list $root "migrate") }}
{{- end }}
{{- $secretEnv := dict "TASKFLOW_DATABASE_URL" $keys.databaseUrl "TASKFLOW_REDIS_URL" $keys.redisUrl }}
{{- if eq $role "api" }}
{{- /* Only the API verifies tokens. */}}
{{- $_ := set $secretEnv "TASKFLOW_JWT_SECRET" $keys.jwtSecret }}
{{- end }}
{{- if eq $role "notifier" }}
{{- $_ := set $secretEnv "TASKFLOW_NOTIFY__SMTP__PASSWORD" $keys.smtpPassword }}
{{- end }}
{{- if or $v.secrets.create $v.secrets.existingSecret }}
{{- range $name := keys $secretEnv | sortAlpha }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ get $secretEnv $name }}
      # Absent keys leave the setting to the files or SSM.
      optional: true
{{- end }}
{{- end }}
{{- with $v.auth.jwksUrl }}
- name: TASKFLOW_AUTH__JWKS_URL
  value: {{ . | quote }}
{{- end }}
{{- with $v.auth.issuer }}
- name: TASKFLOW_AUTH__ISSUER
  value: {{ . | quote }}
{{- end }}
{{- with $v.auth.audience }}
- name: TASKFLOW_AUTH__AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* Pod-level pieces shared by every role: call with (list $ extraVolumes). ------------ */}}
{{- define "taskflow.podSpecCommon" -}}
{{- $root := index . 0 }}
{{- $v := $root.Values -}}
serviceAccountName: {{ include "taskflow.serviceAccountName" $root }}
automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
volumes:
  - name: settings
    configMap:
      name: {{ index . 1 }}
  - name: tmp
    emptyDir:
      sizeLimit: {{ $v.tmpSizeLimit }}
{{- with $v.extraVolumes }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "taskflow.volumeMounts" -}}
- name: settings
  mountPath: /etc/taskflow
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Waits for the schema: `taskflow migrate` takes the migrations' advisory lock, so it
     returns once the hook Job (or another pod) has applied them. */}}
{{- define "taskflow.waitForSchema" -}}
{{- $root := index . 0 }}
{{- if $root.Values.migrations.initContainer }}
initContainers:
  - name: wait-for-schema
    image: {{ include "taskflow.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args: ["migrate"]
    env:
      {{- include "taskflow.env" (list $root "migrate-wait") | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    resources:
      {{- toYaml $root.Values.migrations.resources | nindent 6 }}
    volumeMounts:
      {{- include "taskflow.volumeMounts" $root | nindent 6 }}
{{- end }}
{{- end }}

{{/* Scheduling of one role: call with the role's merged values. -------------------- */}}
{{- define "taskflow.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Topology spread: the role's constraints, each selecting the role's own pods. */}}
{{- define "taskflow.topologySpread" -}}
{{- $spread := index . 0 }}{{- $selector := index . 1 }}
{{- if $spread }}
topologySpreadConstraints:
{{- range $spread }}
  - {{ toYaml (omit . "labelSelector") | nindent 4 | trim }}
    labelSelector:
      matchLabels:
        {{- $selector | nindent 8 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Worker pools with the shared defaults applied. Returns YAML: {pools: [...]} */}}
{{- define "taskflow.workerPools" -}}
{{- $pools := list }}
{{- range .Values.workers.pools }}
{{- $pool := mergeOverwrite (deepCopy $.Values.workers.defaults) (deepCopy .) }}
{{- $pools = append $pools $pool }}
{{- end }}
{{- toYaml (dict "pools" $pools) }}
{{- end }}

{{/* The YAML settings file of every role: values.settings under the environment's
     section, with `queues` declaring every queue a worker pool serves (taskflow refuses
     a worker whose queues are not declared) besides those values.settings lists. */}}
{{- define "taskflow.settingsFile" -}}
{{- $queues := list }}
{{- range (dig "queues" (list) (.Values.settings | default dict)) }}
{{- $queues = append $queues . }}
{{- end }}
{{- range (include "taskflow.workerPools" . | fromYaml).pools }}
{{- if .enabled }}
{{- range .queues }}{{ $queues = append $queues . }}{{ end }}
{{- end }}
{{- end }}
{{- $settings := deepCopy (.Values.settings | default dict) }}
{{- if $queues }}
{{- $_ := set $settings "queues" ($queues | uniq) }}
{{- end }}
{{- dict .Values.environment $settings | toYaml }}
{{- end }}
