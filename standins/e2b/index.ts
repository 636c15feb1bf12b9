export { E2bStandin, STANDIN_ENVD_VERSION, type E2bStandinOptions, type E2bRequestLogEntry } from "./server.js";
export { FaultTable, parseFault, E2B_OPS, type FaultAction, type FaultSpec, type E2bOp } from "./faults.js";
