export { SuperserveStandin, type SuperserveStandinOptions, type SandboxStatus, type SuperserveRequestLogEntry } from "./server.js";
export { FaultTable, parseFault, OPS, type FaultAction, type FaultSpec, type SuperserveOp } from "./faults.js";
