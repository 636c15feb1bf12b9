/**
 * Secret stores: job specs carry secret NAMES; values are resolved here, in
 * the worker, from
 * - the environment: SANDQUEUE_SECRET_<NAME>;
 * - a directory with one file per secret (Kubernetes secret volume: NAME is a
 *   symlink to ..data/NAME, ..data a symlink to a timestamped directory that
 *   is swapped atomically on update). Files are read on every resolve, so a
 *   rotated secret is picked up without a restart. Content is used exactly
 *   as stored (a trailing newline is part of the value).
 * The environment wins over the directory. An unknown name is a
 * SECRET_NOT_FOUND SecretError (not retryable) that names the secret.
 *
 * Values never appear in logs or serialized output: the resolved object
 * hides them from JSON.stringify and util.inspect.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { inspect } from "node:util";
import { ErrorCodes, SecretError } from "../../errors/index.js";

const SECRET_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
export const SECRET_ENV_PREFIX = "SANDQUEUE_SECRET_";

/** NAME -> value, enumerable (spread it into an env), but redacted when serialized or inspected. */
export type ResolvedSecrets = Record<string, string>;

export function redacted(values: Record<string, string>): ResolvedSecrets {
  const out: ResolvedSecrets = { ...values };
  const shown = () => Object.fromEntries(Object.keys(values).map((k) => [k, "[redacted]"]));
  Object.defineProperty(out, "toJSON", { value: shown, enumerable: false });
  Object.defineProperty(out, inspect.custom, { value: () => `ResolvedSecrets ${inspect(shown())}`, enumerable: false });
  return out;
}

export interface SecretStore {
  /** Resolves every name or throws SECRET_NOT_FOUND for the first unknown one. */
  resolve(names: readonly string[]): Promise<ResolvedSecrets>;
}

function checkName(name: string): void {
  if (!SECRET_NAME.test(name)) {
    throw new SecretError(ErrorCodes.SECRET_NOT_FOUND, `secret name ${JSON.stringify(name.slice(0, 80))} is not valid (expected [A-Za-z_][A-Za-z0-9_]*)`, {
      retryable: false,
      details: { secret: name.slice(0, 80) },
    });
  }
}

export function secretNotFound(name: string, where: string): SecretError {
  return new SecretError(ErrorCodes.SECRET_NOT_FOUND, `secret ${name} not found (looked in ${where})`, {
    retryable: false,
    details: { secret: name },
  });
}

export interface SecretStoreOptions {
  /** Defaults to process.env. */
  env?: Record<string, string | undefined>;
  /** A directory of secret files (SANDQUEUE_SECRETS_DIR). */
  dir?: string;
}

export class EnvAndDirSecretStore implements SecretStore {
  private readonly env: Record<string, string | undefined>;
  private readonly dir: string | undefined;

  constructor(opts: SecretStoreOptions = {}) {
    this.env = opts.env ?? process.env;
    this.dir = opts.dir;
  }

  private where(): string {
    return this.dir ? `${SECRET_ENV_PREFIX}<NAME> and the secrets directory` : `${SECRET_ENV_PREFIX}<NAME>`;
  }

  async lookup(name: string): Promise<string | undefined> {
    checkName(name);
    const fromEnv = this.env[`${SECRET_ENV_PREFIX}${name}`];
    if (fromEnv !== undefined) return fromEnv;
    if (!this.dir) return undefined;
    try {
      // Following links is intended here: the directory is operator configuration, and ..data is a link.
      return await readFile(join(this.dir, name), "utf8");
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "EISDIR" || code === "ENOTDIR") return undefined;
      // Permissions or I/O: an infrastructure fault, worth a retry on another worker.
      throw new SecretError(ErrorCodes.SECRET_NOT_FOUND, `secret ${name} could not be read (${code ?? "error"})`, { retryable: true, details: { secret: name } });
    }
  }

  async resolve(names: readonly string[]): Promise<ResolvedSecrets> {
    const values: Record<string, string> = {};
    for (const name of names) {
      const v = await this.lookup(name);
      if (v === undefined) throw secretNotFound(name, this.where());
      values[name] = v;
    }
    return redacted(values);
  }
}

export function openSecretStore(opts: SecretStoreOptions = {}): SecretStore {
  return new EnvAndDirSecretStore(opts);
}
