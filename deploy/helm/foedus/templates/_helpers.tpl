{{- define "foedus.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "foedus.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "foedus.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "foedus.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "foedus.databaseSecret" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "foedus.fullname" .)) -}}
{{- end -}}

{{- define "foedus.agentServer" -}}
{{- .Values.agent.server | default (printf "%s.%s.svc:%d" (include "foedus.fullname" .) .Release.Namespace (int .Values.server.port)) -}}
{{- end -}}

{{/* The agent container, shared by the DaemonSet and the sidecar example. */}}
{{- define "foedus.agentContainer" -}}
- name: foedus-agent
  image: {{ include "foedus.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - --server
    - {{ include "foedus.agentServer" . }}
    {{- if .Values.tls.enabled }}
    - --ca-cert
    - /tls/ca.crt
    - --client-cert
    - /tls/tls.crt
    - --client-key
    - /tls/tls.key
    {{- end }}
    - agent
    - run
    - --deployment
    - {{ .Values.agent.deployment }}
    - --listen
    - 0.0.0.0:{{ .Values.agent.port }}
    - --data-dir
    - /data
    - --name
    - $(AGENT_NAME)
    - --interval
    - {{ .Values.agent.interval | quote }}
  env:
    - name: AGENT_NAME
      valueFrom:
        fieldRef: {fieldPath: metadata.name}
    - name: FOEDUS_API_KEY
      valueFrom:
        secretKeyRef:
          name: {{ .Values.agent.apiKeySecret.name }}
          key: {{ .Values.agent.apiKeySecret.key }}
  ports:
    - name: inference
      containerPort: {{ .Values.agent.port }}
      protocol: TCP
  readinessProbe:
    tcpSocket: {port: inference}
    periodSeconds: 10
  resources:
    {{- toYaml .Values.agent.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - {name: agent-data, mountPath: /data}
    - {name: tmp, mountPath: /tmp}
    {{- if .Values.tls.enabled }}
    - {name: agent-tls, mountPath: /tls, readOnly: true}
    {{- end }}
{{- end -}}

{{- define "foedus.agentVolumes" -}}
- name: agent-data
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- if .Values.tls.enabled }}
- name: agent-tls
  secret:
    secretName: {{ .Values.agent.tlsSecretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}
