/**
 * The API's master secret (webhook signing secrets derive from it): from
 * SANDQUEUE_API_SECRET, else from SANDQUEUE_API_SECRET_FILE, which is
 * created with 32 random bytes (mode 0600) when it does not exist, so a
 * single-host setup needs no step. API instances on several hosts must
 * share one value (a Kubernetes secret, say); it is never written to Redis
 * and never logged.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { ConfigError, ErrorCodes } from "../errors/index.js";

export function loadMasterSecret(cfg: { secret: string | undefined; secretFile: string }): string {
  if (cfg.secret !== undefined) return cfg.secret;
  try {
    const text = readFileSync(cfg.secretFile, "utf8").trim();
    if (text.length < 32) throw new ConfigError(ErrorCodes.CONFIG_INVALID, `SANDQUEUE_API_SECRET_FILE ${cfg.secretFile}: expected at least 32 characters`);
    return text;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
      if (err instanceof ConfigError) throw err;
      throw new ConfigError(ErrorCodes.CONFIG_INVALID, `SANDQUEUE_API_SECRET_FILE ${cfg.secretFile}: cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    }
  }
  mkdirSync(dirname(cfg.secretFile), { recursive: true });
  const secret = randomBytes(32).toString("hex");
  try {
    // 'wx': two processes starting at once must not overwrite each other's.
    writeFileSync(cfg.secretFile, `${secret}\n`, { mode: 0o600, flag: "wx" });
    return secret;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return loadMasterSecret(cfg);
    throw new ConfigError(ErrorCodes.CONFIG_INVALID, `SANDQUEUE_API_SECRET_FILE ${cfg.secretFile}: cannot be created (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
}
