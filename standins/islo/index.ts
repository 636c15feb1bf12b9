export { IsloStandin, type IsloStandinOptions, type GatewayProfile, type GatewayRule, type SandboxStatus } from "./server.js";
export { FaultTable, parseFault, type FaultSpec, type FaultAction, type IsloOp } from "./faults.js";
