/**
 * What a provider declares to the registry: its name, settings, capabilities
 * and factory. Kept apart from registry.ts so a provider's definition never
 * imports the registry that lists it (no import cycle).
 */
import type { ProviderCapabilities, SandboxProvider } from "./provider.js";
import type { ParsedSettings, ProviderContext, SettingsSpec } from "./settings.js";

export interface ProviderDefinition<S extends SettingsSpec = SettingsSpec> {
  name: string;
  /** One line: what the backend is. */
  summary: string;
  settings: S;
  capabilities: ProviderCapabilities;
  create(settings: ParsedSettings<S>, ctx: ProviderContext): Promise<SandboxProvider>;
}

/** Keeps a definition's settings type attached to its factory. */
export function defineProvider<S extends SettingsSpec>(def: ProviderDefinition<S>): ProviderDefinition<S> {
  return def;
}
