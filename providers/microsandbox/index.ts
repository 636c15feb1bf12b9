export { MicrosandboxProvider, type MicrosandboxProviderOptions } from "./microsandbox-provider.js";
export { microsandboxDefinition } from "./definition.js";
