import { describe, expect, it } from "vitest";
import { ConfigError, ErrorCodes, SpecError } from "../../errors/index.js";
import { parseWorkerConfig } from "../../worker/config.js";
import { resolveLimits } from "../../worker/limits.js";

describe("worker config", () => {
  it("has working defaults", () => {
    const c = parseWorkerConfig({});
    expect(c.redisUrl).toBe("redis://127.0.0.1:6379");
    expect(c.queue).toBe("sandqueue");
    expect(c.provider).toBe("local");
    expect(c.concurrency).toBeGreaterThan(0);
    expect(Object.isFrozen(c) && Object.isFrozen(c.defaultLimits)).toBe(true);
  });

  it("flags win over the environment", () => {
    const c = parseWorkerConfig({ SANDQUEUE_CONCURRENCY: "3", SANDQUEUE_QUEUE: "a" }, { concurrency: "5" });
    expect(c.concurrency).toBe(5);
    expect(c.queue).toBe("a");
  });

  it("names the variable and what it accepts", () => {
    const bad = (env: Record<string, string>, flags: Record<string, string> = {}) => {
      try {
        parseWorkerConfig(env, flags);
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        expect((err as ConfigError).code).toBe(ErrorCodes.CONFIG_INVALID);
        return (err as Error).message;
      }
      throw new Error("expected a ConfigError");
    };
    expect(bad({ SANDQUEUE_CONCURRENCY: "many" })).toContain('SANDQUEUE_CONCURRENCY="many": expected an integer from 1 to 1024');
    expect(bad({}, { concurrency: "0" })).toContain('--concurrency="0": expected an integer from 1 to 1024');
    expect(bad({ REDIS_URL: "http://x" })).toContain("REDIS_URL");
    expect(bad({ SANDQUEUE_LOG: "yes" })).toContain('SANDQUEUE_LOG="yes": expected true or false');
    expect(bad({ SANDQUEUE_PROVIDER: "vm" })).toContain("expected one of local, docker");
    expect(bad({ SANDQUEUE_DEFAULT_TIMEOUT_MS: "5000", SANDQUEUE_MAX_TIMEOUT_MS: "1000" })).toContain("above the maximum");
  });

  it("parses booleans as the strings true/false", () => {
    expect(parseWorkerConfig({ SANDQUEUE_LOG: "false" }).logJobs).toBe(false);
    expect(parseWorkerConfig({ SANDQUEUE_LOG: "true" }).logJobs).toBe(true);
  });
});

describe("limits", () => {
  const defaults = { timeoutMs: 10_000, memoryMb: 256, pids: 128, maxOutputBytes: 1024 };
  const max = { timeoutMs: 60_000, memoryMb: 1024, pids: 512, maxOutputBytes: 4096 };
  it("fills defaults and keeps asked values within the maximum", () => {
    expect(resolveLimits({ timeoutMs: 500 }, defaults, max)).toEqual({ ...defaults, timeoutMs: 500 });
  });
  it("refuses values above the worker's maximum, naming them", () => {
    try {
      resolveLimits({ memoryMb: 4096, pids: 1000 }, defaults, max);
      throw new Error("expected a SpecError");
    } catch (err) {
      expect(err).toBeInstanceOf(SpecError);
      expect((err as SpecError).code).toBe(ErrorCodes.LIMIT_ABOVE_MAX);
      expect((err as Error).message).toContain("limits.memoryMb: 4096 is above this worker's maximum of 1024");
      expect((err as Error).message).toContain("limits.pids: 1000");
    }
  });
});

describe("snapshot retention setting", () => {
  it("parses durations and names the variable when wrong", () => {
    expect(parseWorkerConfig({ SANDQUEUE_SNAPSHOT_RETENTION: "7d" }).snapshotRetentionMs).toBe(7 * 86_400_000);
    expect(parseWorkerConfig({}).snapshotRetentionMs).toBeUndefined();
    expect(() => parseWorkerConfig({ SANDQUEUE_SNAPSHOT_RETENTION: "soon" })).toThrow(
      /SANDQUEUE_SNAPSHOT_RETENTION="soon": expected a duration such as 12h, 7d or 4w/,
    );
  });
});
