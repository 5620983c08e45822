{{/*
The pod template of one agent workload (a DaemonSet or Deployment per architecture, or the
emulating DaemonSet). Call with (dict "ctx" $ "id" "amd64" "a" MERGED-SETTINGS "kind" "DaemonSet"
"emulate" "none" "nodeSelector" MAP).
*/}}
{{- define "archfarm.agentPod" -}}
{{- $ctx := .ctx }}
{{- $a := .a }}
{{- $ag := $ctx.Values.agents }}
metadata:
  labels:
    {{- include "archfarm.selectorLabels" (dict "ctx" $ctx "component" (printf "agent-%s" .id)) | nindent 4 }}
  {{- with $ag.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  # The agent only talks to the coordinator, never to the Kubernetes API.
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $ag.terminationGracePeriodSeconds }}
  {{- with $ctx.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  nodeSelector:
    {{- toYaml .nodeSelector | nindent 4 }}
  {{- with (concat ($ag.tolerations | default list) ($a.tolerations | default list)) }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with ($a.affinity | default $ag.affinity) }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: agent
      image: {{ include "archfarm.image" (dict "ctx" $ctx "image" $ag.image) }}
      imagePullPolicy: {{ $ag.image.pullPolicy }}
      {{- if eq .emulate "none" }}
      command: ["archfarm-agent"]
      {{- else }}
      # The agent finds QEMU handlers in /proc/sys/fs/binfmt_misc, which a container's own /proc
      # lacks (and runc refuses volumes inside /proc), so it mounts binfmt_misc itself first.
      command:
        - /bin/sh
        - -c
        - |
          mountpoint -q /proc/sys/fs/binfmt_misc ||
            mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
          exec archfarm-agent "$@"
        - archfarm-agent
      {{- end }}
      {{- with (concat ($ag.extraArgs | default list) ($a.extraArgs | default list)) }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      env:
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        # Unique in the farm: one DaemonSet pod per node and architecture, or one per Deployment pod.
        - name: ARCHFARM_AGENT_NAME
          {{- if eq .kind "DaemonSet" }}
          value: "$(NODE_NAME)-{{ .id }}"
          {{- else }}
          value: "$(POD_NAME)"
          {{- end }}
        - name: ARCHFARM_COORDINATOR
          value: {{ include "archfarm.coordinatorUrl" $ctx | quote }}
        - name: ARCHFARM_JOIN_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ include "archfarm.authSecret" $ctx }}
              key: {{ $ctx.Values.auth.joinTokenKey }}
        - name: ARCHFARM_WORK_DIR
          value: /var/lib/archfarm-agent
        - name: ARCHFARM_CAPACITY
          value: {{ $a.capacity | default $ag.capacity | int | quote }}
        - name: ARCHFARM_EMULATE
          value: {{ .emulate | quote }}
        {{- if $ag.caCertSecret }}
        - name: ARCHFARM_CA_CERT
          value: /etc/archfarm/ca/ca.crt
        {{- end }}
        {{- with (concat ($ag.extraEnv | default list) ($a.extraEnv | default list)) }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with ($a.resources | default $ag.resources) }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $ag.securityContext | nindent 8 }}
      volumeMounts:
        - name: work
          mountPath: /var/lib/archfarm-agent
        {{- if $ag.caCertSecret }}
        - name: ca
          mountPath: /etc/archfarm/ca
          readOnly: true
        {{- end }}
  volumes:
    {{- if and (eq .kind "DaemonSet") (eq $ag.workDir.type "hostPath") }}
    # One directory per DaemonSet and release, so agents on one node never share storage.
    - name: work
      hostPath:
        path: {{ printf "%s/%s-%s-%s" (trimSuffix "/" $ag.workDir.hostPathBase) $ctx.Release.Namespace $ctx.Release.Name .id }}
        type: DirectoryOrCreate
    {{- else }}
    - name: work
      emptyDir:
        sizeLimit: {{ $ag.workDir.emptyDirSizeLimit }}
    {{- end }}
    {{- if $ag.caCertSecret }}
    - name: ca
      secret:
        secretName: {{ $ag.caCertSecret }}
        items:
          - key: {{ $ag.caCertKey }}
            path: ca.crt
    {{- end }}
{{- end }}

{{/* The platform an architecture's agents build, as the coordinator names it (metric labels). */}}
{{- define "archfarm.platform" -}}
{{- if .a.platform }}{{ .a.platform }}{{ else if eq .arch "arm" }}linux/arm/v7{{ else }}linux/{{ .arch }}{{ end }}
{{- end }}
