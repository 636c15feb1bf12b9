import { mkdir, mkdtemp, rm, symlink, writeFile, rename } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { inspect } from "node:util";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { ErrorCodes, SecretError } from "../../errors/index.js";
import { maskSecrets, openSecretStore, SecretMasker } from "../../worker/secrets/index.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sq-secrets-"));
});
afterEach(async () => rm(dir, { recursive: true, force: true }));

/** Kubernetes secret-volume layout: NAME -> ..data/NAME, ..data -> ..<timestamp>. */
async function k8sVolume(values: Record<string, string>, version: string): Promise<void> {
  const real = join(dir, `..${version}`);
  await mkdir(real);
  for (const [k, v] of Object.entries(values)) await writeFile(join(real, k), v);
  await symlink(`..${version}`, join(dir, "..data_tmp"));
  await rename(join(dir, "..data_tmp"), join(dir, "..data"));
  for (const k of Object.keys(values)) await symlink(`..data/${k}`, join(dir, k)).catch(() => {});
}

describe("secret store", () => {
  test("resolves from env and from a Kubernetes-style directory; env wins; rotation is picked up", async () => {
    await k8sVolume({ DB_PASSWORD: "pw-v1", API_KEY: "from-dir" }, "2026_01_01");
    const store = openSecretStore({ env: { SANDQUEUE_SECRET_API_KEY: "from-env" }, dir });
    expect({ ...(await store.resolve(["API_KEY", "DB_PASSWORD"])) }).toEqual({ API_KEY: "from-env", DB_PASSWORD: "pw-v1" });
    await k8sVolume({ DB_PASSWORD: "pw-v2" }, "2026_02_01");
    expect((await store.resolve(["DB_PASSWORD"])).DB_PASSWORD).toBe("pw-v2");
  });

  test("unknown name is SECRET_NOT_FOUND, not retryable, naming the secret", async () => {
    const store = openSecretStore({ env: {}, dir });
    const err = await store.resolve(["NOPE"]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SecretError);
    expect(err).toMatchObject({ code: ErrorCodes.SECRET_NOT_FOUND, retryable: false });
    expect((err as Error).message).toContain("NOPE");
    await expect(store.resolve(["..data"])).rejects.toMatchObject({ code: ErrorCodes.SECRET_NOT_FOUND });
    await expect(store.resolve(["../etc/passwd"])).rejects.toMatchObject({ code: ErrorCodes.SECRET_NOT_FOUND });
  });

  test("values never show up when serialized or inspected", async () => {
    const store = openSecretStore({ env: { SANDQUEUE_SECRET_TOKEN: "hunter2-value" } });
    const s = await store.resolve(["TOKEN"]);
    expect(JSON.stringify(s)).not.toContain("hunter2");
    expect(JSON.stringify({ nested: s })).not.toContain("hunter2");
    expect(inspect(s)).not.toContain("hunter2");
    expect(`${inspect({ s }, { depth: 5 })}`).not.toContain("hunter2");
    expect(Object.values(s)).toEqual(["hunter2-value"]);
    expect({ ...s }).toEqual({ TOKEN: "hunter2-value" }); // spreads into an exec env
  });
});

describe("maskSecrets", () => {
  const m = (s: string, values: string[], truncated = false) => maskSecrets(Buffer.from(s), values, { truncated }).toString();

  test("every occurrence, overlapping values, multi-byte values", () => {
    expect(m("a hunter2 b hunter2hunter2", ["hunter2"])).toBe("a *** b ******");
    expect(m("xxabcdefyy", ["abcd", "cdef"])).toBe("xx***yy");
    expect(m("aaaaa", ["aa"])).toBe("***");
    expect(m("pw=pässwörd!", ["pässwörd"])).toBe("pw=***!");
    expect(m("nothing here", ["", "absent"])).toBe("nothing here");
  });

  test("truncated tail that is a prefix of a secret", () => {
    expect(m("token: hunt", ["hunter2"], true)).toBe("token: ***");
    expect(m("token: hunt", ["hunter2"], false)).toBe("token: hunt");
    expect(m("end", ["zzz"], true)).toBe("end");
  });
});

describe("SecretMasker (streaming)", () => {
  async function run(chunks: string[], values: string[], truncated = false): Promise<string> {
    const masker = new SecretMasker(values, { truncated });
    const out: Buffer[] = [];
    const done = (async () => {
      for await (const c of masker) out.push(c as Buffer);
    })();
    Readable.from(chunks.map((c) => Buffer.from(c))).pipe(masker);
    await done;
    return Buffer.concat(out).toString();
  }

  test("values split across two (or more) chunks", async () => {
    expect(await run(["user=adm", "in pass=hun", "ter2 done"], ["hunter2", "admin"])).toBe("user=*** pass=*** done");
    expect(await run(["h", "u", "n", "t", "e", "r", "2", "!"], ["hunter2"])).toBe("***!");
    expect(await run(["hunter2hun", "ter2"], ["hunter2"])).toBe("******");
    // Overlapping values where the second only completes in the next chunk.
    expect(await run(["xxabcd", "efyy"], ["abcd", "cdef"])).toBe("xx***yy");
  });

  test("a stream cut inside a secret masks the tail when truncated", async () => {
    expect(await run(["ok hun"], ["hunter2"], true)).toBe("ok ***");
    expect(await run(["ok hun"], ["hunter2"], false)).toBe("ok hun");
  });

  test("random chunking gives the same result as the buffer version", async () => {
    const values = ["s3cr3t", "tok-ABC", "ab"];
    const text = "xx s3cr3t yy tok-ABCab s3cr3ts3cr3t tok-AB zz ab".repeat(20);
    const expected = maskSecrets(Buffer.from(text), values, { truncated: false }).toString();
    for (let seed = 1; seed < 30; seed++) {
      const chunks: string[] = [];
      for (let i = 0; i < text.length; ) {
        const n = 1 + ((i * 7 + seed * 13) % 9);
        chunks.push(text.slice(i, i + n));
        i += n;
      }
      expect(await run(chunks, values)).toBe(expected);
    }
  });
});
