export { ProvisionerStandin, type ProvisionerStandinOptions } from "./server.js";
