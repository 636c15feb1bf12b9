export { NorthflankProvider, type NorthflankProviderOptions } from "./northflank-provider.js";
export { NorthflankSandbox } from "./northflank-sandbox.js";
export { NORTHFLANK_CAPABILITIES } from "./capabilities.js";
export { LEASE_PREFIX } from "./lease.js";
