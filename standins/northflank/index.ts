export { NorthflankStandin, type NorthflankStandinOptions, type NorthflankRequestLogEntry } from "./server.js";
export { FaultTable, parseFault, type FaultSpec, type FaultAction, type NorthflankOp } from "./faults.js";
