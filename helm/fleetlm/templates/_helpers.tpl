{{/* Names and labels. */}}
{{- define "fleetlm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fleetlm.fullname" -}}
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

{{- define "fleetlm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleetlm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fleetlm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fleetlm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "fleetlm.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Secret names: the chart's own, or the existing ones the values name. */}}
{{- define "fleetlm.secretName" -}}
{{- printf "%s-secrets" (include "fleetlm.fullname" .) -}}
{{- end -}}
{{- define "fleetlm.adminTokenSecret" -}}
{{- .Values.fleetlm.adminToken.existingSecret | default (include "fleetlm.secretName" .) -}}
{{- end -}}
{{- define "fleetlm.apiKeysSecret" -}}
{{- .Values.fleetlm.apiKeys.existingSecret | default (include "fleetlm.secretName" .) -}}
{{- end -}}
{{- define "fleetlm.rayAuthSecret" -}}
{{- .Values.ray.auth.existingSecret | default (printf "%s-ray-auth" (include "fleetlm.fullname" .)) -}}
{{- end -}}

{{/* A secret value: the one given, else the one the live Secret already holds (kept across
     upgrades), else a new random one. Args: (list $ givenValue secretName key). */}}
{{- define "fleetlm.keptOrRandom" -}}
{{- $root := index . 0 -}}
{{- $given := index . 1 -}}
{{- $name := index . 2 -}}
{{- $key := index . 3 -}}
{{- if $given -}}
{{- $given -}}
{{- else -}}
{{- $live := lookup "v1" "Secret" $root.Release.Namespace $name -}}
{{- if and $live $live.data (hasKey $live.data $key) -}}
{{- index $live.data $key | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The deployment YAML the pods read: values.fleetlm.config with the keys the chart owns. */}}
{{- define "fleetlm.config" -}}
{{- $cfg := fromYaml .Values.fleetlm.config -}}
{{- if hasKey $cfg "Error" -}}
{{- fail (printf "fleetlm.config is not valid YAML: %s" (get $cfg "Error")) -}}
{{- end -}}
{{- $security := get $cfg "security" | default dict -}}
{{- if hasKey $security "admin_token" -}}
{{- fail "fleetlm.config: security.admin_token is refused (a ConfigMap is no place for it); set fleetlm.adminToken.value or fleetlm.adminToken.existingSecret" -}}
{{- end -}}
{{- if hasKey $security "api_keys" -}}
{{- fail "fleetlm.config: security.api_keys is refused (a ConfigMap is no place for it); set fleetlm.apiKeys.keys or fleetlm.apiKeys.existingSecret" -}}
{{- end -}}
{{- $server := dict "host" "0.0.0.0" "admin_host" "0.0.0.0" "http_port" (int .Values.service.api.port) "admin_port" (int .Values.service.admin.port) "controller_grpc_port" (int .Values.service.grpcPort) -}}
{{- $owned := dict "server" $server -}}
{{- if .Values.fleetlm.apiKeys.enabled -}}
{{- $_ := set $owned "security" (dict "api_keys_env" "FLEETLM_API_KEYS") -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $cfg $owned) -}}
{{- end -}}

{{/* Environment of every Ray container. */}}
{{- define "fleetlm.env" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: FLEETLM_CONFIG
  value: {{ .Values.fleetlm.configPath | quote }}
- name: FLEETLM_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "fleetlm.adminTokenSecret" . }}
      key: {{ .Values.fleetlm.adminToken.key }}
{{- if .Values.fleetlm.apiKeys.enabled }}
- name: FLEETLM_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "fleetlm.apiKeysSecret" . }}
      key: {{ .Values.fleetlm.apiKeys.key }}
{{- end }}
{{- if .Values.ray.auth.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "fleetlm.rayAuthSecret" . }}
      key: auth_token
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "fleetlm.volumeMounts" -}}
- name: fleetlm-config
  mountPath: {{ dir .Values.fleetlm.configPath }}
  readOnly: true
- name: dshm
  mountPath: /dev/shm
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "fleetlm.volumes" -}}
- name: fleetlm-config
  configMap:
    name: {{ include "fleetlm.fullname" . }}-config
    defaultMode: 0555
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shmSize }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod-level fields shared by head and workers. */}}
{{- define "fleetlm.podCommon" -}}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
{{ toYaml . | indent 2 }}
{{- end }}
volumes:
{{ include "fleetlm.volumes" . }}
{{- end -}}
