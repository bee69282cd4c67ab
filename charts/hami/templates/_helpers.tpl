{{/* Names and labels shared by every template. */}}
{{- define "hami.fullname" -}}
{{- .Values.fullnameOverride | default .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "hami.scheduler" -}}
{{- printf "%s-scheduler" (include "hami.fullname" .) -}}
{{- end -}}

{{- define "hami.decisionKey" -}}
{{- printf "%s-decision-key" (include "hami.fullname" .) -}}
{{- end -}}

{{- define "hami.node" -}}
{{- printf "%s-node" (include "hami.fullname" .) -}}
{{- end -}}

{{- define "hami.webhook" -}}
{{- printf "%s-webhook" (include "hami.fullname" .) -}}
{{- end -}}

{{- define "hami.tlsSecret" -}}
{{- printf "%s-scheduler-tls" (include "hami.fullname" .) -}}
{{- end -}}

{{- define "hami.labels" -}}
app.kubernetes.io/name: hami
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "hami.registry" -}}
{{- if .Values.global.imageRegistry -}}{{ .Values.global.imageRegistry }}/{{- end -}}
{{- end -}}

{{- define "hami.controllerImage" -}}
{{- printf "%s%s:%s" (include "hami.registry" .) .Values.image.controller.repository (.Values.image.controller.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "hami.nodeImage" -}}
{{- printf "%s%s:%s" (include "hami.registry" .) .Values.image.node.repository (.Values.image.node.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Every resource the extender manages (kube-scheduler ignores them). */}}
{{- define "hami.managedResources" -}}
{{- list .Values.resourceName .Values.resourceMem .Values.resourceMemPercentage .Values.resourceCores .Values.resourcePriority | toJson -}}
{{- end -}}
