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

{{- /* The KubeSchedulerConfiguration API the cluster's kube-scheduler reads:
v1 from 1.25, v1beta2 on 1.22-1.24, v1beta1 on 1.19-1.21, v1alpha2 on 1.18. */ -}}
{{- define "hami.schedulerConfigAPI" -}}
{{- if semverCompare ">=1.25-0" .Capabilities.KubeVersion.Version -}}
kubescheduler.config.k8s.io/v1
{{- else if semverCompare ">=1.22-0" .Capabilities.KubeVersion.Version -}}
kubescheduler.config.k8s.io/v1beta2
{{- else if semverCompare ">=1.19-0" .Capabilities.KubeVersion.Version -}}
kubescheduler.config.k8s.io/v1beta1
{{- else -}}
kubescheduler.config.k8s.io/v1alpha2
{{- end -}}
{{- end -}}

{{- /* Webhook matchConditions exist from 1.28 (beta, on by default). */ -}}
{{- define "hami.hasMatchConditions" -}}
{{- if semverCompare ">=1.28-0" .Capabilities.KubeVersion.Version }}true{{ end -}}
{{- end -}}

{{- /* The kubernetes.io/metadata.name namespace label exists from 1.21. */ -}}
{{- define "hami.hasNamespaceNameLabel" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version }}true{{ end -}}
{{- end -}}

{{- /* The namespaces no webhook applies to: those labelled hami.io/webhook=ignore
and, where the label kubernetes.io/metadata.name exists (1.21+), kube-system,
the release's own namespace (so the controller can start while its webhook is
down) and whitelistNamespaces. On 1.20 and older label those namespaces
hami.io/webhook=ignore instead. */ -}}
{{- define "hami.webhookNamespaces" -}}
namespaceSelector:
  matchExpressions:
    - key: hami.io/webhook
      operator: NotIn
      values: ["ignore"]
    {{- if include "hami.hasNamespaceNameLabel" . }}
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values:
        - kube-system
        - {{ .Release.Namespace }}
        {{- range .Values.scheduler.admissionWebhook.whitelistNamespaces }}
        {{- if ne . "kube-system" }}
        - {{ . }}
        {{- end }}
        {{- end }}
    {{- end }}
{{- end -}}

{{- /* The webhooks' failure policies: their own where matchConditions scope
them to the requests they are about, else unscopedFailurePolicy (Ignore by
default), so that an unreachable webhook cannot block every pod of the cluster. */ -}}
{{- define "hami.mutatingFailurePolicy" -}}
{{- if include "hami.hasMatchConditions" . -}}
{{ .Values.scheduler.admissionWebhook.failurePolicy }}
{{- else -}}
{{ .Values.scheduler.admissionWebhook.unscopedFailurePolicy }}
{{- end -}}
{{- end -}}

{{- define "hami.validatingFailurePolicy" -}}
{{- if include "hami.hasMatchConditions" . -}}
Fail
{{- else -}}
{{ .Values.scheduler.admissionWebhook.unscopedFailurePolicy }}
{{- end -}}
{{- end -}}
