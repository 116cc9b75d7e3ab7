{{/* Names. The operator's objects are "<release>-operator" (63 characters at most). */}}
{{- define "modelops.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelops.serviceAccountName" -}}
{{- default (include "modelops.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "modelops.leaseName" -}}
{{- default (include "modelops.fullname" .) .Values.operator.leaderElection.leaseName -}}
{{- end -}}

{{- define "modelops.labels" -}}
app.kubernetes.io/name: modelops
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "modelops.selector" -}}
app.kubernetes.io/name: modelops
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* An image reference: repository, then @digest or :tag (the tag defaults to the appVersion).
     Usage: include "modelops.image" (list .Values.image.operator .Chart.AppVersion) */}}
{{- define "modelops.image" -}}
{{- $image := index . 0 -}}
{{- $appVersion := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $appVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaced mode: watched namespaces given. */}}
{{- define "modelops.namespaced" -}}
{{- if .Values.operator.namespaces }}true{{ end -}}
{{- end -}}

{{/* The rules the operator needs on the objects it reconciles, in each namespace it watches.
     Each one is proven needed: scripts/rbac_rules_needed.py drops one at a time and the
     real-API-server least-privilege test then fails. */}}
{{- define "modelops.operatorRules" -}}
# The resource reconciled (finalizers: to set blockOwnerDeletion owner references).
- apiGroups: [modelops.dev]
  resources: [modeldeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [modelops.dev]
  resources: [modeldeployments/status, modeldeployments/finalizers]
  verbs: [patch, update]
# What the operator creates for each ModelDeployment.
- apiGroups: [serving.kserve.io]
  resources: [inferenceservices]
  verbs: [get, list, watch, create, patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# Conversion failure messages and load-test results (termination messages of the Job Pods).
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Judging the model (spec.rollout.shadow, .performanceGate): the mirror ConfigMap the stable
# predictor watches, and the Services of the candidate and stable predictors.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, create, patch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create]
{{- if .Values.predictorAccess.enabled }}
# Predictor access (spec.predictor.auth, .networkPolicy): the namespace's predictor ServiceAccount
# and each ModelDeployment's NetworkPolicy.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch, delete]
{{- end }}
{{- end -}}

{{- define "modelops.predictorAuthBinding" -}}
{{- printf "%s-predictor-auth" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Restricted Pod Security for a container. */}}
{{- define "modelops.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
