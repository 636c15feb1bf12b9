/**
 * `sandqueue api` configuration: environment and flags, parsed once at start.
 * A bad value stops the program with a message naming the variable (or flag)
 * and what it accepts, as the worker's config does.
 */
import { resolve } from "node:path";
import { z } from "zod";
import { ConfigError, ErrorCodes } from "../errors/index.js";
import { LIMIT_BOUNDS } from "../producer/job-spec.js";
import { DEFAULT_PREFIX, DEFAULT_QUEUE, DEFAULT_REDIS_URL } from "../producer/redis.js";
import { parseDuration } from "../worker/duration.js";
import { ADDRESS_CLASSES, type AddressClass } from "./address-policy.js";

const int = (min: number, max: number) =>
  z
    .string()
    .trim()
    .regex(/^\d+$/, { error: `expected an integer from ${min} to ${max}` })
    .transform(Number)
    .pipe(z.number().int().min(min, { error: `expected an integer from ${min} to ${max}` }).max(max, { error: `expected an integer from ${min} to ${max}` }));

const duration = (min: number, max: number) =>
  z
    .string()
    .transform((v, ctx) => {
      const ms = parseDuration(v, "ms");
      if (ms === null || ms < min || ms > max) {
        ctx.addIssue({ code: "custom", message: `expected a duration from ${min}ms to ${max / 1000}s, such as 500ms, 30s or 2m` });
        return z.NEVER;
      }
      return ms;
    });

const name = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/, { error: "expected letters, digits and . _ - (at most 100 characters)" });

const allowList = z.string().transform((v, ctx) => {
  const items = v.split(",").map((s) => s.trim()).filter(Boolean);
  const bad = items.filter((s) => !(ADDRESS_CLASSES as readonly string[]).includes(s));
  if (bad.length) {
    ctx.addIssue({ code: "custom", message: `expected a comma-separated list of ${ADDRESS_CLASSES.join(", ")} (got ${bad.join(", ")})` });
    return z.NEVER;
  }
  return items as AddressClass[];
});

const SETTINGS = {
  redisUrl: { env: "REDIS_URL", flag: "redis", schema: z.string().regex(/^rediss?:\/\//, { error: "expected a redis:// or rediss:// URL" }) },
  queue: { env: "SANDQUEUE_QUEUE", flag: "queue", schema: name },
  prefix: { env: "SANDQUEUE_PREFIX", flag: undefined, schema: name },
  port: { env: "SANDQUEUE_API_PORT", flag: "port", schema: int(0, 65535) },
  host: { env: "SANDQUEUE_API_HOST", flag: "host", schema: z.string().min(1) },
  bodyLimitBytes: { env: "SANDQUEUE_API_BODY_LIMIT", flag: undefined, schema: int(1024, 1024 * 1024 * 1024) },
  maxWaitMs: { env: "SANDQUEUE_API_MAX_WAIT", flag: undefined, schema: duration(1, 3_600_000) },
  callbackAllow: { env: "SANDQUEUE_CALLBACK_ALLOW", flag: undefined, schema: allowList },
  webhookAttempts: { env: "SANDQUEUE_WEBHOOK_ATTEMPTS", flag: undefined, schema: int(1, 100) },
  webhookBackoffMs: { env: "SANDQUEUE_WEBHOOK_BACKOFF", flag: undefined, schema: duration(1, 3_600_000) },
  webhookTimeoutMs: { env: "SANDQUEUE_WEBHOOK_TIMEOUT", flag: undefined, schema: duration(1, 600_000) },
  webhookConcurrency: { env: "SANDQUEUE_WEBHOOK_CONCURRENCY", flag: undefined, schema: int(0, 1024) },
  webhookRetentionMs: { env: "SANDQUEUE_WEBHOOK_DEAD_RETENTION", flag: undefined, schema: z.string().transform((v, ctx) => parseDuration(v, "ms") ?? (ctx.addIssue({ code: "custom", message: "expected a duration such as 7d" }), z.NEVER)) },
  secret: { env: "SANDQUEUE_API_SECRET", flag: undefined, schema: z.string().min(32, { error: "expected at least 32 characters (openssl rand -hex 32)" }) },
  secretFile: { env: "SANDQUEUE_API_SECRET_FILE", flag: undefined, schema: z.string().min(1) },
  snapshotsUrl: { env: "SANDQUEUE_SNAPSHOTS", flag: undefined, schema: z.string().regex(/^(file|s3):\/\//, { error: "expected a file:// or s3:// URL" }) },
  defaultTimeoutMs: { env: "SANDQUEUE_DEFAULT_TIMEOUT_MS", flag: undefined, schema: int(LIMIT_BOUNDS.timeoutMs.min, LIMIT_BOUNDS.timeoutMs.max) },
  defaultMemoryMb: { env: "SANDQUEUE_DEFAULT_MEMORY_MB", flag: undefined, schema: int(LIMIT_BOUNDS.memoryMb.min, LIMIT_BOUNDS.memoryMb.max) },
  logRequests: { env: "SANDQUEUE_LOG", flag: undefined, schema: z.enum(["true", "false"], { error: "expected true or false" }).transform((s) => s === "true") },
} as const;

type Settings = typeof SETTINGS;
type Parsed = { [K in keyof Settings]: z.output<Settings[K]["schema"]> };

export interface ApiConfig {
  readonly redisUrl: string;
  readonly queue: string;
  readonly prefix: string;
  readonly host: string;
  /** 0 picks a free port (tests). */
  readonly port: number;
  readonly bodyLimitBytes: number;
  /** The longest `?wait=` a request may hold. */
  readonly maxWaitMs: number;
  /** Address classes a callback may resolve to besides public ones (none by default). */
  readonly callbackAllow: readonly AddressClass[];
  readonly webhookAttempts: number;
  readonly webhookBackoffMs: number;
  readonly webhookTimeoutMs: number;
  /** Deliveries in flight per API process; 0 leaves delivery to other instances. */
  readonly webhookConcurrency: number;
  /** How long dead-lettered deliveries stay visible. */
  readonly webhookRetentionMs: number;
  /** The master secret webhook signing secrets derive from (never stored in Redis). */
  readonly secret: string | undefined;
  readonly secretFile: string;
  readonly snapshotsUrl: string;
  /** What workers apply when a spec omits a limit (the same variables and defaults as worker/config.ts). */
  readonly defaultLimits: { readonly timeoutMs: number; readonly memoryMb: number };
  readonly logRequests: boolean;
}

export function parseApiConfig(
  env: NodeJS.ProcessEnv = process.env,
  flags: Record<string, string | undefined> = {},
  overrides: Partial<ApiConfig> = {},
): ApiConfig {
  const parsed: Partial<Parsed> = {};
  const problems: string[] = [];
  for (const [key, setting] of Object.entries(SETTINGS) as [keyof Settings, Settings[keyof Settings]][]) {
    const fromFlag = setting.flag ? flags[setting.flag] : undefined;
    const raw = fromFlag ?? env[setting.env];
    if (raw === undefined || raw === "") continue;
    const result = setting.schema.safeParse(raw);
    if (result.success) (parsed as Record<string, unknown>)[key] = result.data;
    else {
      const source = fromFlag !== undefined ? `--${setting.flag}` : setting.env;
      problems.push(`${source}=${JSON.stringify(raw)}: ${result.error.issues[0]?.message ?? "invalid"}`);
    }
  }
  if (problems.length) throw new ConfigError(ErrorCodes.CONFIG_INVALID, `invalid configuration:\n  ${problems.join("\n  ")}`);
  return {
    redisUrl: parsed.redisUrl ?? DEFAULT_REDIS_URL,
    queue: parsed.queue ?? DEFAULT_QUEUE,
    prefix: parsed.prefix ?? DEFAULT_PREFIX,
    host: parsed.host ?? "127.0.0.1",
    port: parsed.port ?? 8380,
    bodyLimitBytes: parsed.bodyLimitBytes ?? 32 * 1024 * 1024,
    maxWaitMs: parsed.maxWaitMs ?? 60_000,
    callbackAllow: parsed.callbackAllow ?? [],
    webhookAttempts: parsed.webhookAttempts ?? 8,
    webhookBackoffMs: parsed.webhookBackoffMs ?? 1000,
    webhookTimeoutMs: parsed.webhookTimeoutMs ?? 10_000,
    webhookConcurrency: parsed.webhookConcurrency ?? 16,
    webhookRetentionMs: parsed.webhookRetentionMs ?? 7 * 86_400_000,
    secret: parsed.secret,
    secretFile: parsed.secretFile ?? resolve(".sandqueue", "api-secret"),
    snapshotsUrl: parsed.snapshotsUrl ?? `file://${resolve(".sandqueue", "snapshots")}`,
    defaultLimits: { timeoutMs: parsed.defaultTimeoutMs ?? 10_000, memoryMb: parsed.defaultMemoryMb ?? 256 },
    logRequests: parsed.logRequests ?? true,
    ...overrides,
  };
}
