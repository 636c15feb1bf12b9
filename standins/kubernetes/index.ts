/** A stand-in Kubernetes API server whose pods are real local sandboxes (see standins/README.md). */
export { KubernetesStandin, type StandinOptions } from "./server.js";
export type { FaultSpec, FaultAction, FaultMatch, Fault, Verb } from "./faults.js";
export type { RequestLogEntry } from "./api.js";
export type { Pod } from "./pods.js";
export { V4, V5 } from "./exec.js";
export { CONTEXT_NAME } from "./kubeconfig.js";
