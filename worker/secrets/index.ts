/** Secret resolution and output masking. See docs/SNAPSHOTS.md#secrets. */
export * from "./store.js";
export { maskSecrets, SecretMasker, MASK } from "./mask.js";
