/**
 * The Pod of one sandbox: hardened (non-root, no privilege escalation, all
 * capabilities dropped, read-only root, RuntimeDefault seccomp, no service
 * account token, no service links), sized from the job's limits, with
 * size-limited emptyDir volumes for /workspace and /tmp, and a deadline so
 * it never outlives its worker by long even when no reaper runs.
 */
import type { V1Pod } from "@kubernetes/client-node";
import { WORKSPACE_DIR } from "../provider.js";
import type { Toleration } from "./definition.js";

export const CONTAINER = "sandbox";
/** The job's own labels, as JSON: annotations take any text, label keys do not. */
export const ANNOTATION_JOB_LABELS = "sandqueue.io/job-labels";
export const ANNOTATION_HOST = "sandqueue.io/host";
export const ANNOTATION_PID = "sandqueue.io/pid";
export const LABEL_POOLED = "sandqueue.io/pooled";

export interface PodSettings {
  runAsUser: number;
  workspaceSizeMb: number;
  tmpSizeMb: number;
  cpu?: string;
  runtimeClassName?: string;
  nodeSelector: Record<string, string>;
  tolerations: Toleration[];
}

export interface PodRequest {
  name: string;
  image: string;
  memoryMb: number;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  /** activeDeadlineSeconds: counted by the kubelet from the pod's start. */
  deadlineSeconds: number;
}

export function sandboxPod(req: PodRequest, s: PodSettings): V1Pod {
  const memory = `${req.memoryMb}Mi`;
  const resources = {
    limits: { memory, ...(s.cpu ? { cpu: s.cpu } : {}) },
    requests: { memory, ...(s.cpu ? { cpu: s.cpu } : {}) },
  };
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: req.name, labels: req.labels, annotations: req.annotations },
    spec: {
      // Always: a memory kill (which takes the container: cgroup v2 group
      // OOM) restarts the container with its emptyDir workspace kept, so the
      // sandbox stays usable; the worker deletes the pod after one job anyway.
      restartPolicy: "Always",
      activeDeadlineSeconds: req.deadlineSeconds,
      terminationGracePeriodSeconds: 0,
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      ...(s.runtimeClassName ? { runtimeClassName: s.runtimeClassName } : {}),
      ...(Object.keys(s.nodeSelector).length ? { nodeSelector: s.nodeSelector } : {}),
      ...(s.tolerations.length ? { tolerations: s.tolerations } : {}),
      securityContext: {
        runAsNonRoot: true,
        runAsUser: s.runAsUser,
        runAsGroup: s.runAsUser,
        fsGroup: s.runAsUser,
        seccompProfile: { type: "RuntimeDefault" },
      },
      containers: [
        {
          name: CONTAINER,
          image: req.image,
          // Idles as the container's init; every job runs through exec.
          command: ["sleep", "infinity"],
          workingDir: WORKSPACE_DIR,
          resources,
          securityContext: {
            allowPrivilegeEscalation: false,
            privileged: false,
            readOnlyRootFilesystem: true,
            runAsNonRoot: true,
            capabilities: { drop: ["ALL"] },
            seccompProfile: { type: "RuntimeDefault" },
          },
          volumeMounts: [
            { name: "workspace", mountPath: WORKSPACE_DIR },
            { name: "tmp", mountPath: "/tmp" },
          ],
        },
      ],
      volumes: [
        { name: "workspace", emptyDir: { sizeLimit: `${s.workspaceSizeMb}Mi` } },
        { name: "tmp", emptyDir: { sizeLimit: `${s.tmpSizeMb}Mi` } },
      ],
    },
  };
}
