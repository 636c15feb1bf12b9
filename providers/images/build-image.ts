/**
 * Sandbox images without a registry: a Debian root filesystem made by
 * debootstrap into `<imagesDir>/<name>` (the local provider uses that
 * directory as the sandbox root) and imported into the container engine
 * under the same name through the Engine API (`POST /images/create?fromSrc=-`,
 * which both Docker and Podman's compat service accept).
 *
 * The rootfs is cached: a rebuild with the same suite and packages only
 * re-imports it. Building needs root (debootstrap) and GNU tar.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, readdir, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { ErrorCodes, ProviderError } from "../../errors/index.js";
import { EngineClient, readAll } from "../docker/engine-client.js";
import { translateEngineError } from "../docker/engine-errors.js";

export interface BuildImageOptions {
  /** Debian suite; default bookworm. */
  suite?: string;
  /** Extra Debian packages; default python3-minimal. */
  packages?: string[];
  /** Where root filesystems live (`<imagesDir>/<name>`). */
  imagesDir: string;
  /** Debian mirror URL; default: the one apt is configured with. */
  mirror?: string;
  /** Engine to import into; `null` builds the rootfs only. Default: $DOCKER_HOST. */
  engine?: EngineClient | null;
  /** Rebuild the rootfs even when the cached one matches. */
  force?: boolean;
  log?: (line: string) => void;
  signal?: AbortSignal;
}

export interface BuiltImage {
  name: string;
  rootfs: string;
  /** False when the cached rootfs was reused. */
  rootfsBuilt: boolean;
  /** Engine image id, null when not imported. */
  imageId: string | null;
}

interface ImageMeta {
  name: string;
  suite: string;
  packages: string[];
  mirror: string;
  builtAt: string;
}

const NAME = /^[a-z0-9][a-z0-9._-]{0,127}$/;
const DEFAULT_SUITE = "bookworm";
const DEFAULT_PACKAGES = ["python3-minimal"];

export function imageNameProblem(name: string): string | null {
  return NAME.test(name) ? null : "must match [a-z0-9][a-z0-9._-]* (at most 128 characters)";
}

/** Metadata lives beside the rootfs dirs, in a dot-dir no image name can take. */
function metaPath(imagesDir: string, name: string): string {
  return path.join(imagesDir, ".meta", `${name}.json`);
}

export async function buildImage(name: string, opts: BuildImageOptions): Promise<BuiltImage> {
  const problem = imageNameProblem(name);
  if (problem) throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `invalid image name "${name}": it ${problem}`);
  const log = opts.log ?? (() => {});
  const suite = opts.suite ?? DEFAULT_SUITE;
  const packages = [...new Set(opts.packages ?? DEFAULT_PACKAGES)].sort();
  const rootfs = path.join(opts.imagesDir, name);
  const metaFile = metaPath(opts.imagesDir, name);

  const cached = await readMeta(metaFile);
  const reuse =
    !opts.force &&
    cached !== null &&
    existsSync(rootfs) &&
    cached.suite === suite &&
    cached.packages.join(",") === packages.join(",");

  if (reuse) {
    log(`rootfs ${rootfs} is up to date (${suite}: ${packages.join(", ")})`);
  } else {
    const mirror = opts.mirror ?? (await aptMirror(suite));
    await mkdir(path.dirname(metaFile), { recursive: true });
    // Build beside the final dir and rename: a failed or interrupted build
    // never leaves a half rootfs under the image's name.
    const tmp = path.join(opts.imagesDir, `.build-${name}-${process.pid}`);
    await rm(tmp, { recursive: true, force: true });
    log(`debootstrap ${suite} (${packages.join(", ")}) from ${mirror}`);
    try {
      await run(
        "debootstrap",
        ["--variant=minbase", `--include=${packages.join(",")}`, suite, tmp, mirror],
        opts.signal,
      );
      // No /workspace in the image: container engines mount a tmpfs there
      // and the local provider binds its own. The apt cache is dead weight.
      await rm(path.join(tmp, "var/cache/apt/archives"), { recursive: true, force: true });
      await mkdir(path.join(tmp, "var/cache/apt/archives/partial"), { recursive: true });
      await rm(rootfs, { recursive: true, force: true });
      await rename(tmp, rootfs);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true }).catch(() => {});
      throw err;
    }
    const meta: ImageMeta = { name, suite, packages, mirror, builtAt: new Date().toISOString() };
    await writeFile(metaFile, `${JSON.stringify(meta, null, 2)}\n`);
  }

  const engine = opts.engine === undefined ? new EngineClient({ dockerHost: process.env.DOCKER_HOST }) : opts.engine;
  let imageId: string | null = null;
  if (engine) {
    log(`importing ${rootfs} into the engine at ${engine.describe()} as ${name}`);
    imageId = await importRootfs(engine, name, rootfs, opts.signal);
    if (opts.engine === undefined) engine.close();
  }
  return { name, rootfs, rootfsBuilt: !reuse, imageId };
}

/**
 * Streams the rootfs as a tar (GNU tar, numeric owners, so the image's
 * ownership is the rootfs's) into `POST /images/create?fromSrc=-`.
 */
async function importRootfs(engine: EngineClient, name: string, rootfs: string, signal?: AbortSignal): Promise<string> {
  const tar = spawn("tar", ["-C", rootfs, "--numeric-owner", "-c", "."], { stdio: ["ignore", "pipe", "pipe"], signal });
  const tarDone = exitOf(tar, "tar");
  try {
    const res = await engine.stream({
      method: "POST",
      path: "/images/create",
      query: { fromSrc: "-", repo: name, tag: "latest" },
      body: tar.stdout,
      headers: { "Content-Type": "application/x-tar" },
      signal,
    });
    // A progress stream of JSON objects; an error arrives as one of them.
    const text = (await readAll(res)).toString("utf8");
    await tarDone;
    let id: string | null = null;
    // Newline-delimited on Docker; Podman may write objects back to back.
    for (const line of text.replace(/}\s*{/g, "}\n{").split("\n")) {
      if (!line.trim()) continue;
      const msg = JSON.parse(line) as { error?: string; status?: string; id?: string };
      if (msg.error) throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `image import failed: ${msg.error}`);
      if (msg.id?.startsWith("sha256:")) id = msg.id;
      else if (msg.status?.startsWith("sha256:")) id = msg.status;
    }
    if (!id) {
      // Docker answers with a bare id in `status`; look it up by name instead.
      const info = await engine.json<{ Id: string }>({ method: "GET", path: `/images/${name}/json` });
      id = info.Id;
    }
    return id;
  } catch (err) {
    tar.kill();
    throw translateEngineError(err, { op: "import image", endpoint: engine.describe() });
  }
}

export interface ImageInfo {
  name: string;
  /** Rootfs directory, if one was built here. */
  rootfs: string | null;
  suite: string | null;
  packages: string[];
  /** Engine image id and size, if the engine has an image by that name. */
  engineId: string | null;
  sizeBytes: number | null;
}

/** Images known as a rootfs under imagesDir and/or by the engine (`engine: null` skips it). */
export async function listImages(opts: { imagesDir: string; engine?: EngineClient | null }): Promise<ImageInfo[]> {
  const byName = new Map<string, ImageInfo>();
  const entry = (name: string): ImageInfo => {
    let e = byName.get(name);
    if (!e) {
      e = { name, rootfs: null, suite: null, packages: [], engineId: null, sizeBytes: null };
      byName.set(name, e);
    }
    return e;
  };
  const dirents = await readdir(opts.imagesDir, { withFileTypes: true }).catch(() => []);
  for (const d of dirents) {
    if (!d.isDirectory() || d.name.startsWith(".")) continue;
    const e = entry(d.name);
    e.rootfs = path.join(opts.imagesDir, d.name);
    const meta = await readMeta(metaPath(opts.imagesDir, d.name));
    if (meta) {
      e.suite = meta.suite;
      e.packages = meta.packages;
    }
  }
  const engine = opts.engine === undefined ? new EngineClient({ dockerHost: process.env.DOCKER_HOST }) : opts.engine;
  if (engine) {
    try {
      const list = await engine.json<Array<{ Id: string; RepoTags: string[] | null; Size: number }>>({ method: "GET", path: "/images/json" });
      for (const img of list) {
        for (const tag of img.RepoTags ?? []) {
          // Podman stores imports as docker.io/library/NAME:latest or localhost/NAME:latest.
          const short = tag.replace(/^(docker\.io\/library\/|localhost\/)/, "").replace(/:latest$/, "");
          const e = entry(short);
          e.engineId = img.Id;
          e.sizeBytes = img.Size;
        }
      }
    } catch (err) {
      throw translateEngineError(err, { op: "list images", endpoint: engine.describe() });
    } finally {
      if (opts.engine === undefined) engine.close();
    }
  }
  return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name));
}

async function readMeta(file: string): Promise<ImageMeta | null> {
  try {
    return JSON.parse(await readFile(file, "utf8")) as ImageMeta;
  } catch {
    return null;
  }
}

/**
 * The Debian mirror apt already uses for `suite` (deb822 .sources or
 * one-line .list files), so builds work wherever apt does.
 */
export async function aptMirror(suite: string, aptDir = "/etc/apt"): Promise<string> {
  const files = [path.join(aptDir, "sources.list")];
  const dir = path.join(aptDir, "sources.list.d");
  for (const f of (await readdir(dir).catch(() => [])).sort()) {
    if (f.endsWith(".list") || f.endsWith(".sources")) files.push(path.join(dir, f));
  }
  for (const file of files) {
    const text = await readFile(file, "utf8").catch(() => "");
    // deb822 stanzas
    for (const stanza of text.split(/\n\s*\n/)) {
      const uris = /^URIs:\s*(\S+)/im.exec(stanza)?.[1];
      const suites = /^Suites:\s*(.+)$/im.exec(stanza)?.[1]?.split(/\s+/) ?? [];
      const types = /^Types:\s*(.+)$/im.exec(stanza)?.[1] ?? "";
      if (uris && types.split(/\s+/).includes("deb") && suites.includes(suite)) return uris;
    }
    // one-line format: deb [opts] URI suite components...
    for (const line of text.split("\n")) {
      const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
      if (m && m[2] === suite) return m[1]!;
    }
  }
  throw new ProviderError(
    ErrorCodes.PROVIDER_FAILED,
    `no apt source for Debian "${suite}" in ${aptDir}; pass a mirror (--mirror URL)`,
  );
}

function run(cmd: string, args: string[], signal?: AbortSignal): Promise<void> {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], signal });
  let tail = "";
  const keep = (b: Buffer): void => {
    tail = (tail + b.toString("utf8")).slice(-4000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  return exitOf(child, cmd).catch((err: Error) => {
    throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `${err.message}\n${tail.trim()}`, { cause: err });
  });
}

function exitOf(child: ReturnType<typeof spawn>, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    child.once("error", (err: NodeJS.ErrnoException) =>
      reject(err.code === "ENOENT" ? new Error(`${what} is not installed (apt-get install ${what})`) : err),
    );
    child.once("close", (code, sig) => (code === 0 ? resolve() : reject(new Error(`${what} exited with ${code ?? sig}`))));
  });
}
