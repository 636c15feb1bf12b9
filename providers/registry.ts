/**
 * The provider registry: every sandbox backend is one folder under
 * providers/ plus one entry here. worker/ and cli/ name no provider: they
 * look a definition up by name, parse its settings from the environment and
 * call its factory. A definition loads nothing heavy; its factory imports
 * the backend only when chosen.
 */
import { ConfigError, ErrorCodes } from "../errors/index.js";
import type { SandboxProvider } from "./provider.js";
import type { ProviderDefinition } from "./definition.js";
import { parseSettings, type ParsedSettings, type ProviderContext, type SettingsSpec } from "./settings.js";
import { localDefinition } from "./local/definition.js";
import { dockerDefinition } from "./docker/definition.js";
import { kubernetesDefinition } from "./kubernetes/definition.js";
import { microsandboxDefinition } from "./microsandbox/definition.js";
import { provisionerDefinition } from "./provisioner/definition.js";
import { isloDefinition } from "./islo/definition.js";
import { superserveDefinition } from "./superserve/definition.js";
import { e2bDefinition } from "./e2b/definition.js";
import { northflankDefinition } from "./northflank/definition.js";

/** Every provider, in the order `sandqueue providers` lists them. */
export const PROVIDERS: readonly ProviderDefinition[] = [
  localDefinition as unknown as ProviderDefinition,
  dockerDefinition as unknown as ProviderDefinition,
  kubernetesDefinition as unknown as ProviderDefinition,
  microsandboxDefinition as unknown as ProviderDefinition,
  provisionerDefinition as unknown as ProviderDefinition,
  isloDefinition as unknown as ProviderDefinition,
  superserveDefinition as unknown as ProviderDefinition,
  e2bDefinition as unknown as ProviderDefinition,
  northflankDefinition as unknown as ProviderDefinition,
];

export type { ProviderDefinition };

export const DEFAULT_PROVIDER = "local";

export function providerNames(): string[] {
  return PROVIDERS.map((p) => p.name);
}

/** The definition of `name`; CONFIG_INVALID naming the choices when there is none. */
export function providerDefinition(name: string, source = "provider"): ProviderDefinition {
  const def = PROVIDERS.find((p) => p.name === name);
  if (!def) {
    throw new ConfigError(ErrorCodes.CONFIG_INVALID, `${source}=${JSON.stringify(name)}: expected one of ${providerNames().join(", ")}`);
  }
  return def;
}

/** Parses `name`'s settings from the environment (defaults applied; CONFIG_INVALID names each bad variable). */
export function providerSettings(name: string, env: NodeJS.ProcessEnv, ctx: ProviderContext): Record<string, unknown> {
  const def = providerDefinition(name);
  return parseSettings(def.name, def.settings, env, ctx);
}

/** Builds a provider from parsed settings. */
export async function createProvider(name: string, settings: Record<string, unknown>, ctx: ProviderContext): Promise<SandboxProvider> {
  const def = providerDefinition(name);
  return def.create(settings as ParsedSettings<SettingsSpec>, ctx);
}
