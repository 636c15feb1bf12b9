/** The local (bubblewrap + cgroups) sandbox provider. */
export { LocalProvider, BWRAP_OVERHEAD_PIDS, type LocalProviderOptions } from "./local-provider.js";
export { LocalSandbox } from "./local-sandbox.js";
export { detectCgroups, type CgroupManager, type SandboxCgroup } from "./cgroups.js";
export { buildBwrapArgs, type BwrapArgsInput } from "./bwrap-args.js";
export { HOST_IMAGE, imageNameProblem } from "./image-root.js";
