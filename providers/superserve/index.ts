export { SuperserveProvider, LABEL_CREATE, type SuperserveProviderOptions, type ReattachOutcome } from "./superserve-provider.js";
export { SuperserveSandbox } from "./superserve-sandbox.js";
export { SUPERSERVE_CAPABILITIES } from "./capabilities.js";
export { routeDataPlane, sdkDataPlaneOrigin } from "./data-plane-route.js";
