/**
 * Images of the local provider: which host paths become the sandbox's
 * read-only root filesystem, expressed as bwrap mount operations.
 *
 * - `host`: the host's /usr plus the /bin,/lib,... links and the few /etc
 *   files sh and python3 need. Nothing else of /etc (no shadow, no ssh keys).
 * - any other name: the directory `<imagesDir>/<name>`, each top-level entry
 *   bound read-only onto the sandbox's (otherwise empty) root.
 */
import { cpSync, existsSync, lstatSync, readlinkSync, mkdirSync, writeFileSync, readdirSync, rmSync } from "node:fs";
import { lstat, readdir, readlink, realpath } from "node:fs/promises";
import path from "node:path";
import { ErrorCodes, ProviderError } from "../../errors/index.js";

export const HOST_IMAGE = "host";

/** Top-level names the sandbox mounts itself; an image's own entries there are ignored. */
const RESERVED = new Set(["proc", "dev", "tmp", "workspace", "sys"]);

/** /etc entries of the host that `host` exposes: loader config, python's config, locale/time. */
const HOST_ETC = [
  "ld.so.cache",
  "ld.so.conf",
  "ld.so.conf.d",
  "nsswitch.conf",
  "localtime",
  "timezone",
  "alternatives",
  "python3",
];

/** Generated, secret-free identity files (the host's list real users). */
const GENERATED_ETC: Record<string, string> = {
  passwd: "root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:1000:1000:sandbox:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
  group: "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n",
  hosts: "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost ip6-loopback\n",
};

/** bwrap operations for one host path bound at the same place: symlinks are recreated, not followed. */
function hostEntryOps(hostPath: string, sandboxPath: string): string[] {
  const st = lstatSync(hostPath);
  if (st.isSymbolicLink()) return ["--symlink", readlinkSync(hostPath), sandboxPath];
  return ["--ro-bind", hostPath, sandboxPath];
}

/**
 * Computes the `host` image once (at provider construction). The /etc it
 * exposes is a copy of the allowed host entries plus generated identity
 * files in `etcDir`, bound as one mount: one bind per file cost ~1.5 ms per
 * exec. The copy is refreshed whenever a provider is constructed.
 */
export function hostImageOps(etcDir: string): string[] {
  const ops: string[] = ["--ro-bind", "/usr", "/usr"];
  for (const name of ["bin", "sbin", "lib", "lib32", "lib64", "libx32"]) {
    const p = `/${name}`;
    if (existsSync(p)) ops.push(...hostEntryOps(p, p));
  }
  rmSync(etcDir, { recursive: true, force: true });
  mkdirSync(etcDir, { recursive: true, mode: 0o755 });
  const etcEntries = readdirSync("/etc");
  // python3.11, python3.12, ...: the interpreter reads its sitecustomize from there.
  const wanted = etcEntries.filter((n) => HOST_ETC.includes(n) || /^python3\.\d+$/.test(n));
  for (const name of wanted) {
    // Symlinks stay symlinks (localtime -> /usr/share/zoneinfo/..., alternatives/*): resolved inside the sandbox.
    cpSync(`/etc/${name}`, path.join(etcDir, name), { recursive: true, verbatimSymlinks: true, dereference: false });
  }
  for (const [name, content] of Object.entries(GENERATED_ETC)) {
    writeFileSync(path.join(etcDir, name), content, { mode: 0o644 });
  }
  ops.push("--ro-bind", etcDir, "/etc");
  return ops;
}

/** Image names are `a-z0-9._-` segments joined by `/`; never absolute, never `..`. */
export function imageNameProblem(image: string): string | null {
  if (image.length === 0 || image.length > 200) return "must have 1 to 200 characters";
  if (image.startsWith("/")) return "must not be absolute";
  const segs = image.split("/");
  if (segs.some((s) => s === "" || s === "." || s === "..")) return "must not contain empty, '.' or '..' segments";
  if (!/^[A-Za-z0-9][A-Za-z0-9._:@/-]*$/.test(image)) return "may contain only letters, digits and . _ : @ / -";
  return null;
}

function imageNotFound(image: string, message: string, cause?: unknown): ProviderError {
  return new ProviderError(ErrorCodes.IMAGE_NOT_FOUND, message, { retryable: false, cause, details: { image } });
}

/** bwrap operations that build the root filesystem of a directory image. */
export async function dirImageOps(imagesDir: string | undefined, image: string): Promise<string[]> {
  const problem = imageNameProblem(image);
  if (problem) throw imageNotFound(image, `invalid image name '${image}': it ${problem}`);
  if (!imagesDir) {
    throw imageNotFound(image, `image '${image}' not found: the local provider has no imagesDir configured (only '${HOST_IMAGE}' is available)`);
  }
  const root = path.join(imagesDir, image);
  const where = `looked for the root filesystem directory ${root}`;
  let real: string;
  try {
    real = await realpath(root);
  } catch (err) {
    throw imageNotFound(image, `image '${image}' not found: ${where}`, err);
  }
  // A symlinked image inside imagesDir is fine; one that escapes it is not.
  const realImages = await realpath(imagesDir);
  if (!real.startsWith(realImages + path.sep) || !(await lstat(real)).isDirectory()) {
    throw imageNotFound(image, `image '${image}' not found: ${where} (not a directory inside imagesDir)`);
  }
  const ops: string[] = [];
  for (const entry of await readdir(real, { withFileTypes: true })) {
    if (RESERVED.has(entry.name)) continue;
    const hostPath = path.join(real, entry.name);
    if (entry.isSymbolicLink()) ops.push("--symlink", await readlink(hostPath), `/${entry.name}`);
    else if (entry.isDirectory() || entry.isFile()) ops.push("--ro-bind", hostPath, `/${entry.name}`);
  }
  return ops;
}
