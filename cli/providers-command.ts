/**
 * `sandqueue providers [--json | --markdown]`: every registered provider with
 * its settings (variable, default, what it accepts) and its capabilities.
 * `--markdown` prints the README's tables (a test keeps the two in step).
 */
import { parseArgs } from "node:util";
import type { ProviderCapabilities } from "../providers/provider.js";
import { DEFAULT_PROVIDER, PROVIDERS } from "../providers/registry.js";

export const PROVIDERS_USAGE = "usage: sandqueue providers [--json | --markdown]";

/** Capability names and what each means, in listing order. */
export const CAPABILITY_DOCS: Record<keyof ProviderCapabilities, string> = {
  memoryLimit: "`limits.memoryMb` enforced",
  pidsLimit: "`limits.pids` enforced",
  limitEvents: "memory/pids kills reported as `killed/memory`, `killed/pids`",
  stdin: "stdin reaches the program",
  separateStderr: "stdout and stderr apart",
  byteExactOutput: "output bytes unchanged",
  networkIsolation: "`network: \"none\"` enforced",
  networkPolicy: "egress policies enforced",
  hostWorkspace: "workspace is a host directory",
};

function defaultOf(s: { default?: unknown; defaultDoc?: string }, fallback = "—"): string {
  if (s.defaultDoc) return s.defaultDoc;
  if (typeof s.default === "function") {
    const v = (s.default as (ctx: { workerId: string; stateDir: string; concurrency: number }) => string | undefined)({
      workerId: "",
      stateDir: ".sandqueue",
      concurrency: 1,
    });
    return v ?? fallback;
  }
  return fallback;
}

/** The README's provider tables, rendered from the registry. */
export function providerTablesMarkdown(): string {
  const settings = ["| provider | variable | default | accepts | what it sets |", "|---|---|---|---|---|"];
  for (const p of PROVIDERS) {
    for (const s of Object.values(p.settings)) {
      settings.push(`| \`${p.name}\` | \`${s.env}\` | ${defaultOf(s)} | ${s.accepts} | ${s.doc} |`);
    }
  }
  const caps = [`| capability | ${PROVIDERS.map((p) => `\`${p.name}\``).join(" | ")} |`, `|---|${PROVIDERS.map(() => "---").join("|")}|`];
  for (const [key, doc] of Object.entries(CAPABILITY_DOCS) as [keyof ProviderCapabilities, string][]) {
    caps.push(`| \`${key}\`: ${doc} | ${PROVIDERS.map((p) => (p.capabilities[key] ? "yes" : "no")).join(" | ")} |`);
  }
  return `${settings.join("\n")}\n\n${caps.join("\n")}\n`;
}

export async function providersCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { json: { type: "boolean" }, markdown: { type: "boolean" }, help: { type: "boolean", short: "h" } }, strict: true });
  if (values.help) {
    process.stdout.write(`${PROVIDERS_USAGE}\n`);
    return 0;
  }
  if (values.markdown) {
    process.stdout.write(providerTablesMarkdown());
    return 0;
  }
  if (values.json) {
    const out = PROVIDERS.map((p) => ({
      name: p.name,
      default: p.name === DEFAULT_PROVIDER,
      summary: p.summary,
      capabilities: p.capabilities,
      settings: Object.values(p.settings).map((s) => ({ env: s.env, default: defaultOf(s, "") || null, accepts: s.accepts, doc: s.doc })),
    }));
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return 0;
  }
  for (const p of PROVIDERS) {
    process.stdout.write(`${p.name}${p.name === DEFAULT_PROVIDER ? " (default)" : ""}: ${p.summary}\n`);
    process.stdout.write("  settings:\n");
    for (const s of Object.values(p.settings)) {
      process.stdout.write(`    ${s.env.padEnd(26)} default ${defaultOf(s).padEnd(28)} ${s.doc} (${s.accepts})\n`);
    }
    const caps = Object.keys(CAPABILITY_DOCS) as (keyof ProviderCapabilities)[];
    process.stdout.write(`  enforces/provides: ${caps.filter((c) => p.capabilities[c]).join(", ") || "nothing"}\n`);
    process.stdout.write(`  does not: ${caps.filter((c) => !p.capabilities[c]).join(", ") || "—"}\n\n`);
  }
  return 0;
}
