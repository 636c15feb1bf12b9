export { IsloProvider, type IsloProviderOptions, type IsloAcquireOptions } from "./islo-provider.js";
export { isloDefinition } from "./definition.js";
export { profilePlan, type EgressPolicyLike } from "./gateway.js";
export { sandboxName, ownerOf, NAME_PREFIX } from "./names.js";
