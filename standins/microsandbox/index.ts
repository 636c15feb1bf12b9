export { MicrosandboxStandin, type MicrosandboxStandinOptions } from "./server.js";
export { FaultTable, parseFault, type FaultSpec } from "./faults.js";
