/**
 * Provider settings: each provider declares its own (environment variable,
 * default, what it accepts, one line of doc) as data, so the worker parses
 * them without knowing the provider, `sandqueue providers` lists them, and a
 * test keeps the README's tables in step.
 */
import { z } from "zod";
import { ConfigError, ErrorCodes } from "../errors/index.js";

/** What a provider's factory and defaults may depend on. */
export interface ProviderContext {
  /** This worker's id: the owner label on every sandbox it creates. */
  workerId: string;
  /** Project-local state directory (`.sandqueue/`): default images, work dirs. */
  stateDir: string;
  /** Job slots of this worker (pool sizes default to it). */
  concurrency: number;
}

export interface ProviderSetting<T = unknown> {
  env: string;
  /** One line: what the setting does. */
  doc: string;
  /** What a value must look like, for error messages and docs. */
  accepts: string;
  /** Raw default (parsed like a given value), computed from the context; undefined: none. */
  default?: (ctx: ProviderContext) => string | undefined;
  /** How the default reads in docs, when it is computed. */
  defaultDoc?: string;
  schema: z.ZodType<T, string>;
  /** Never printed (API keys): listings show whether it is set, not its value. */
  secret?: boolean;
}

export type SettingsSpec = Record<string, ProviderSetting>;

export type ParsedSettings<S extends SettingsSpec> = {
  [K in keyof S]: S[K] extends ProviderSetting<infer T> ? T | undefined : never;
};

/** Helpers for common shapes, each carrying its own "accepts" text. */
export const settingTypes = {
  int(min: number, max: number): { schema: z.ZodType<number, string>; accepts: string } {
    const accepts = `an integer from ${min} to ${max}`;
    return {
      accepts,
      schema: z
        .string()
        .trim()
        .regex(/^\d+$/, { error: `expected ${accepts}` })
        .transform(Number)
        .pipe(z.number().int().min(min, { error: `expected ${accepts}` }).max(max, { error: `expected ${accepts}` })),
    };
  },
  /** Any non-empty string, described as `accepts` (an API key, a context name). */
  text(accepts: string): { schema: z.ZodType<string, string>; accepts: string } {
    return { accepts, schema: z.string().min(1, { error: `expected ${accepts}` }) };
  },
  path(): { schema: z.ZodType<string, string>; accepts: string } {
    return settingTypes.text("a path");
  },
  url(schemes: string[]): { schema: z.ZodType<string, string>; accepts: string } {
    const accepts = `a URL (${schemes.map((s) => `${s}://`).join(" or ")})`;
    const re = new RegExp(`^(${schemes.join("|")})://\\S+$`);
    return { accepts, schema: z.string().regex(re, { error: `expected ${accepts}` }) };
  },
  /** Comma-separated key=value pairs (an image map); `what` names the pair, e.g. "image=image-path". */
  pairs(what: string): { schema: z.ZodType<Record<string, string>, string>; accepts: string } {
    const accepts = `comma-separated ${what} pairs`;
    const schema = z.string().transform((s, ctx) => {
      const out: Record<string, string> = {};
      for (const part of s.split(",").map((p) => p.trim()).filter(Boolean)) {
        const i = part.indexOf("=");
        const key = i > 0 ? part.slice(0, i).trim() : "";
        const value = part.slice(i + 1).trim();
        if (!/^[A-Za-z0-9._:@/-]+$/.test(key) || !value) {
          ctx.addIssue({ code: "custom", message: `expected ${accepts}; ${JSON.stringify(part)} is not one` });
          return z.NEVER;
        }
        out[key] = value;
      }
      return out;
    });
    return { accepts, schema };
  },
  bool(): { schema: z.ZodType<boolean, string>; accepts: string } {
    return { accepts: "true or false", schema: z.enum(["true", "false"], { error: "expected true or false" }).transform((s) => s === "true") };
  },
};

/**
 * A hosted service's credential and the file that may hold it instead
 * (`<env>_FILE`, its first line): `what` names it ("API key"), `sentAs` how
 * the service takes it ("X-API-Key"). The provider reads them with
 * readApiKey (providers/remote/http-client.ts).
 */
export function credentialSettings(env: string, what: string, sentAs: string): { value: ProviderSetting<string>; file: ProviderSetting<string> } {
  return {
    value: { env, doc: `${what} (${sentAs}); or ${env}_FILE`, ...settingTypes.text(`an ${what}`), secret: true },
    file: { env: `${env}_FILE`, doc: `file whose first line is the ${what} (when ${env} is unset)`, ...settingTypes.path() },
  };
}

/** The create call's timeout and retries of an SDK-driven provider (e2b, superserve); `prefix` is its variables' (SANDQUEUE_E2B). */
export function createCallSettings(prefix: string): { timeoutMs: ProviderSetting<number>; retries: ProviderSetting<number> } {
  return {
    timeoutMs: { env: `${prefix}_CREATE_TIMEOUT_MS`, doc: "how long one create call may take", default: () => "120000", ...settingTypes.int(1000, 3_600_000) },
    retries: {
      env: `${prefix}_CREATE_RETRIES`,
      doc: "further create attempts after a 429/5xx/timeout (a lost create is found by its token first)",
      default: () => "3",
      ...settingTypes.int(0, 10),
    },
  };
}

/**
 * Per-request timeout and retries of a provider on a plain HTTP or RPC API
 * (microsandbox, provisioner): `calls` names its requests, `execCall` the
 * one that waits for the job (retried only on a 429).
 */
export function requestSettings(prefix: string, calls: string, execCall: string): { timeoutMs: ProviderSetting<number>; retries: ProviderSetting<number> } {
  return {
    timeoutMs: {
      env: `${prefix}_REQUEST_TIMEOUT_MS`,
      doc: `per request (${calls}), ms; ${execCall} waits for the job's wall time plus a grace`,
      default: () => "60000",
      ...settingTypes.int(100, 3_600_000),
    },
    retries: {
      env: `${prefix}_RETRIES`,
      doc: `further attempts after a 5xx, a timeout or a 429 (never for ${execCall} but on 429)`,
      default: () => "4",
      ...settingTypes.int(0, 20),
    },
  };
}

/**
 * Parses a provider's settings from the environment (defaults applied).
 * Every bad value is reported at once, naming the variable and what it accepts.
 */
export function parseSettings<S extends SettingsSpec>(
  providerName: string,
  spec: S,
  env: NodeJS.ProcessEnv,
  ctx: ProviderContext,
): ParsedSettings<S> {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [key, setting] of Object.entries(spec)) {
    const given = env[setting.env];
    const raw = given === undefined || given === "" ? setting.default?.(ctx) : given;
    if (raw === undefined) continue;
    const r = setting.schema.safeParse(raw);
    if (r.success) out[key] = r.data;
    else {
      const shown = setting.secret ? "(hidden)" : JSON.stringify(raw);
      problems.push(`${setting.env}=${shown}: ${r.error.issues[0]?.message ?? `expected ${setting.accepts}`}`);
    }
  }
  if (problems.length) {
    throw new ConfigError(ErrorCodes.CONFIG_INVALID, `invalid ${providerName} provider settings:\n  ${problems.join("\n  ")}`);
  }
  return out as ParsedSettings<S>;
}
