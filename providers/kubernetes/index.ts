export { KubernetesProvider, isDefaultDeny, type KubernetesProviderOptions } from "./kubernetes-provider.js";
export { kubernetesDefinition } from "./definition.js";
export { sandboxPod } from "./pod-spec.js";
