export { ProvisionerProvider, type ProvisionerProviderOptions } from "./provisioner-provider.js";
export { provisionerDefinition } from "./definition.js";
