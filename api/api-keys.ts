/**
 * API keys, kept in Redis per queue (a key grants access to one queue's API).
 *
 * A key reads `sq_<id>_<secret>`: the id finds the record, and only the
 * SHA-256 of the secret is stored, compared in constant time. The secret
 * is 192 random bits, so a fast hash is enough (nothing to brute-force
 * from a dictionary); the plain key is printed once, at creation.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { Redis } from "ioredis";
import { ApiError, ConfigError, ErrorCodes } from "../errors/index.js";

export const KEY_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const KEY_NAME_ACCEPTS = "letters, digits and . _ - (starting with a letter or digit, at most 64 characters)";
const TOKEN = /^sq_([0-9a-f]{12})_([A-Za-z0-9_-]{32})$/;

/** What a key may do; everything left out is unlimited (or, for callbacks and ui, not allowed). */
export interface KeyPolicy {
  maxTimeoutMs?: number;
  maxMemoryMb?: number;
  /** Requests per second, and how many may come at once (a token bucket). */
  rate?: { perSec: number; burst: number };
  /** Jobs of this key queued or running at once. */
  maxActive?: number;
  /** May name a callbackUrl. */
  callbacks: boolean;
  /** May open the queue UI (every job of the queue, whoever sent it). */
  ui: boolean;
}

export interface ApiKey extends KeyPolicy {
  id: string;
  name: string;
  createdAt: number;
  /** Bumped to rotate the key's webhook signing secret. */
  webhookVersion: number;
}

/** Redis key names of the API's own state, apart from BullMQ's: `<prefix>-api:<queue>:...`. */
export function apiKeyspace(prefix: string, queue: string): string {
  return `${prefix}-api:${queue}:`;
}

function hashSecret(secret: string): Buffer {
  return createHash("sha256").update(secret).digest();
}

/** "50/s", "600/m", "10/h", or a bare number per second. Burst: one unit's worth, at least 1. */
export function parseRate(text: string): { perSec: number; burst: number } | null {
  const m = /^(\d+(?:\.\d+)?)(?:\/(s|m|h))?$/.exec(text.trim());
  if (!m) return null;
  const n = Number(m[1]);
  if (!(n > 0)) return null;
  const unitSec = { s: 1, m: 60, h: 3600 }[(m[2] as "s" | "m" | "h" | undefined) ?? "s"];
  return { perSec: n / unitSec, burst: Math.max(1, Math.floor(n)) };
}

export function formatRate(rate: { perSec: number; burst: number }): string {
  return rate.perSec >= 1 ? `${+rate.perSec.toFixed(3)}/s` : `${+(rate.perSec * 60).toFixed(3)}/m`;
}

/** How long an API process trusts a key it has read (revocations are also broadcast, so this is only the backstop). */
export const KEY_CACHE_MS = 5000;

export class ApiKeyStore {
  private readonly base: string;
  /** Keys read recently, by id, with their stored hash: a request then costs no Redis round trip for auth. */
  private readonly cache = new Map<string, { key: ApiKey; hash: Buffer; until: number }>();

  constructor(
    private readonly redis: Redis,
    prefix: string,
    queue: string,
    private readonly cacheMs = 0,
  ) {
    this.base = apiKeyspace(prefix, queue);
  }

  /** Channel on which revocations and rotations are announced to every API process. */
  get changesChannel(): string {
    return `${this.base}changes`;
  }

  /** Forgets a cached key (a revocation or rotation announced on changesChannel). */
  forget(id: string): void {
    this.cache.delete(id);
  }

  private recordKey(id: string): string {
    return `${this.base}key:${id}`;
  }

  private get namesKey(): string {
    return `${this.base}names`;
  }

  /** Creates a key; returns it with the plain token, which is not kept anywhere. */
  async create(name: string, policy: KeyPolicy): Promise<{ key: ApiKey; token: string }> {
    if (!KEY_NAME.test(name)) throw new ConfigError(ErrorCodes.CONFIG_INVALID, `key name ${JSON.stringify(name)}: expected ${KEY_NAME_ACCEPTS}`);
    const id = randomBytes(6).toString("hex");
    const secret = randomBytes(24).toString("base64url");
    const claimed = await this.redis.hsetnx(this.namesKey, name, id);
    if (!claimed) throw new ConfigError(ErrorCodes.CONFIG_INVALID, `a key named ${JSON.stringify(name)} exists; revoke it first or pick another name`);
    const key: ApiKey = { id, name, createdAt: Date.now(), webhookVersion: 1, ...policy };
    await this.redis.hset(this.recordKey(id), { ...toFields(key), hash: hashSecret(secret).toString("hex") });
    return { key, token: `sq_${id}_${secret}` };
  }

  /** The key an `Authorization` header carries, or UNAUTHORIZED. */
  async authenticate(token: string | undefined): Promise<ApiKey> {
    const m = token === undefined ? null : TOKEN.exec(token);
    if (!m) throw unauthorized(token === undefined ? "no API key: send Authorization: Bearer <key>" : "not a sandqueue API key");
    const id = m[1]!;
    const given = hashSecret(m[2]!);
    const cached = this.cache.get(id);
    if (cached && cached.until > Date.now()) {
      if (!timingSafeEqual(given, cached.hash)) throw unauthorized("unknown or revoked API key");
      return cached.key;
    }
    const fields = await this.redis.hgetall(this.recordKey(id));
    const stored = fields.hash ? Buffer.from(fields.hash, "hex") : null;
    // Hash and compare even for an unknown id, so both paths cost the same.
    const ok = timingSafeEqual(given, stored && stored.length === given.length ? stored : Buffer.alloc(given.length)) && stored !== null;
    if (!ok) throw unauthorized("unknown or revoked API key");
    const key = fromFields(id, fields);
    if (this.cacheMs > 0) this.cache.set(id, { key, hash: stored, until: Date.now() + this.cacheMs });
    return key;
  }

  async get(name: string): Promise<ApiKey | null> {
    const id = await this.redis.hget(this.namesKey, name);
    if (!id) return null;
    const fields = await this.redis.hgetall(this.recordKey(id));
    return fields.name ? fromFields(id, fields) : null;
  }

  async list(): Promise<ApiKey[]> {
    const names = await this.redis.hgetall(this.namesKey);
    const keys = await Promise.all(Object.values(names).map(async (id) => ({ id, fields: await this.redis.hgetall(this.recordKey(id)) })));
    return keys
      .filter((k) => k.fields.name)
      .map((k) => fromFields(k.id, k.fields))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  /** True when a key of that name existed. Its record, rate bucket and active set go at once. */
  async revoke(name: string): Promise<boolean> {
    const id = await this.redis.hget(this.namesKey, name);
    if (!id) return false;
    await this.redis
      .multi()
      .del(this.recordKey(id), `${this.base}rate:${id}`, `${this.base}active:${id}`)
      .hdel(this.namesKey, name)
      .publish(this.changesChannel, id)
      .exec();
    return true;
  }

  /** The key's current webhook secret version, or null once it is revoked. */
  async webhookVersionOf(id: string): Promise<number | null> {
    const v = await this.redis.hget(this.recordKey(id), "webhookVersion");
    return v === null ? null : Number(v);
  }

  /** Rotates a key's webhook signing secret; returns the new version. */
  async rotateWebhookSecret(name: string): Promise<ApiKey | null> {
    const id = await this.redis.hget(this.namesKey, name);
    if (!id || !(await this.redis.exists(this.recordKey(id)))) return null;
    await this.redis.multi().hincrby(this.recordKey(id), "webhookVersion", 1).publish(this.changesChannel, id).exec();
    return this.get(name);
  }
}

function unauthorized(message: string): ApiError {
  return new ApiError(ErrorCodes.UNAUTHORIZED, message);
}

function toFields(k: ApiKey): Record<string, string> {
  const f: Record<string, string> = {
    name: k.name,
    createdAt: String(k.createdAt),
    webhookVersion: String(k.webhookVersion),
    callbacks: k.callbacks ? "1" : "0",
    ui: k.ui ? "1" : "0",
  };
  if (k.maxTimeoutMs !== undefined) f.maxTimeoutMs = String(k.maxTimeoutMs);
  if (k.maxMemoryMb !== undefined) f.maxMemoryMb = String(k.maxMemoryMb);
  if (k.maxActive !== undefined) f.maxActive = String(k.maxActive);
  if (k.rate) {
    f.ratePerSec = String(k.rate.perSec);
    f.rateBurst = String(k.rate.burst);
  }
  return f;
}

function fromFields(id: string, f: Record<string, string>): ApiKey {
  const num = (v: string | undefined): number | undefined => (v === undefined ? undefined : Number(v));
  const key: ApiKey = {
    id,
    name: f.name ?? "",
    createdAt: Number(f.createdAt ?? 0),
    webhookVersion: Number(f.webhookVersion ?? 1),
    callbacks: f.callbacks === "1",
    ui: f.ui === "1",
  };
  const maxTimeoutMs = num(f.maxTimeoutMs);
  const maxMemoryMb = num(f.maxMemoryMb);
  const maxActive = num(f.maxActive);
  if (maxTimeoutMs !== undefined) key.maxTimeoutMs = maxTimeoutMs;
  if (maxMemoryMb !== undefined) key.maxMemoryMb = maxMemoryMb;
  if (maxActive !== undefined) key.maxActive = maxActive;
  if (f.ratePerSec !== undefined) key.rate = { perSec: Number(f.ratePerSec), burst: Number(f.rateBurst ?? 1) };
  return key;
}

/** Removes every key the API keeps for a queue (tests and throwaway queues). */
export async function dropApiState(redis: Redis, prefix: string, queue: string): Promise<void> {
  const pattern = `${apiKeyspace(prefix, queue).replace(/[*?[\]\\]/g, "\\$&")}*`;
  let cursor = "0";
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 500);
    cursor = next;
    if (keys.length) await redis.del(...keys);
  } while (cursor !== "0");
}
