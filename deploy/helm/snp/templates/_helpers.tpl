{{/* Labels every object carries (the kustomize manifests carry the first two). */}}
{{- define "snp.labels" -}}
app.kubernetes.io/name: snp-shim
app.kubernetes.io/part-of: snp
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "snp.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "snp.tokenSecret" -}}
{{ .Values.auth.token.secretName }}
{{- end -}}

{{/* Go duration-ish string ("20s", "1m") to seconds, for terminationGracePeriodSeconds. */}}
{{- define "snp.seconds" -}}
{{- $d := toString . -}}
{{- if hasSuffix "ms" $d -}}{{ div (trimSuffix "ms" $d | int) 1000 }}
{{- else if hasSuffix "s" $d -}}{{ trimSuffix "s" $d | int }}
{{- else if hasSuffix "m" $d -}}{{ mul (trimSuffix "m" $d | int) 60 }}
{{- else -}}{{ fail (printf "policy.shutdownTimeout %q: use s, ms or m" $d) }}
{{- end -}}
{{- end -}}
