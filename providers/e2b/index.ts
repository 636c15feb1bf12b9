export { E2bProvider, LABEL_CREATE, listSandboxes, type E2bProviderOptions, type E2bConnection } from "./e2b-provider.js";
export { E2bSandbox } from "./e2b-sandbox.js";
export { E2B_CAPABILITIES } from "./capabilities.js";
