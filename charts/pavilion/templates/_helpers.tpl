{{/* The release's base name: the release name, with "pavilion" appended unless it has it. */}}
{{- define "pavilion.fullname" -}}
{{- if contains "pavilion" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-pavilion" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pavilion.labels" -}}
app.kubernetes.io/name: pavilion
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pavilion.selector" -}}
app.kubernetes.io/name: pavilion
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pavilion.controlName" -}}{{ include "pavilion.fullname" . }}-control{{- end -}}
{{- define "pavilion.dataName" -}}{{ include "pavilion.fullname" . }}-data{{- end -}}

{{/* The control plane's in-cluster DNS names, which its certificate carries. */}}
{{- define "pavilion.controlHosts" -}}
{{- $name := include "pavilion.controlName" . -}}
{{ $name }},{{ $name }}.{{ .Release.Namespace }},{{ $name }}.{{ .Release.Namespace }}.svc,{{ $name }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end -}}

{{/* The label data planes' node ids end in, which their certificate covers as *.LABEL. */}}
{{- define "pavilion.dataDomain" -}}{{ include "pavilion.dataName" . }}{{- end -}}

{{- define "pavilion.controlSecret" -}}
{{- if eq .Values.certificates.mode "existing" -}}{{ required "certificates.controlPlaneSecret is required with mode existing" .Values.certificates.controlPlaneSecret }}{{- else -}}{{ include "pavilion.fullname" . }}-control-plane-tls{{- end -}}
{{- end -}}

{{- define "pavilion.dataSecret" -}}
{{- if eq .Values.certificates.mode "existing" -}}{{ required "certificates.dataPlaneSecret is required with mode existing" .Values.certificates.dataPlaneSecret }}{{- else -}}{{ include "pavilion.fullname" . }}-data-plane-tls{{- end -}}
{{- end -}}

{{- define "pavilion.image" -}}
{{- $image := index .root.Values.image .which -}}
{{ $image.repository }}:{{ $image.tag | default .root.Chart.AppVersion }}
{{- end -}}

{{/* The newest API version of a kind the cluster serves (Helm's defaults when rendering offline). */}}
{{- define "pavilion.hpaApi" -}}
{{- if .Capabilities.APIVersions.Has "autoscaling/v2" -}}autoscaling/v2{{- else -}}autoscaling/v2beta2{{- end -}}
{{- end -}}
{{- define "pavilion.pdbApi" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1" -}}policy/v1{{- else -}}policy/v1beta1{{- end -}}
{{- end -}}

{{/* Restricted pod security: non-root, read-only root, no privileges. */}}
{{- define "pavilion.containerSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities: { drop: [ALL] }
seccompProfile: { type: RuntimeDefault }
{{- end -}}
