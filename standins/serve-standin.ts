/**
 * What every `npm run standin -- NAME --env-file FILE` does around its
 * service: local sandboxes under a work root (a fresh temporary one unless
 * given), the env file a worker reads (0600), a line saying where it
 * listens, then run until SIGTERM or SIGINT and undo all of it (the
 * stand-in deletes its sandboxes, the file and our own work root go).
 */
import { mkdtemp, rm, rmdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { usage } from "../cli/args.js";
import { LocalProvider } from "../providers/local/index.js";

export interface StandinFlags {
  "env-file"?: string;
  "work-root"?: string;
  "images-dir"?: string;
}

export interface ServeStandin<S extends { stop(): Promise<void> }> {
  /** The service's name, as the command and its messages say it. */
  name: string;
  usage: string;
  flags: StandinFlags;
  env: NodeJS.ProcessEnv;
  start(provider: LocalProvider): Promise<S>;
  /** The env file's text (KEY=value lines). */
  envFile(standin: S): string;
  /** Where it listens, for the start-up line. */
  where(standin: S): string;
}

export async function serveStandin<S extends { stop(): Promise<void> }>(o: ServeStandin<S>): Promise<number> {
  if (!o.flags["env-file"]) throw usage(`--env-file FILE is required\n\n${o.usage}`);
  const envFile = path.resolve(o.flags["env-file"]);
  const ownWorkRoot = o.flags["work-root"] === undefined;
  const workRoot = o.flags["work-root"] ?? (await mkdtemp(path.join(os.tmpdir(), `sandqueue-${o.name}-standin-`)));
  const provider = new LocalProvider({
    workRoot,
    cgroupParent: "sandqueue-standin",
    imagesDir: o.flags["images-dir"] ?? o.env.SANDQUEUE_IMAGES_DIR ?? path.resolve(".sandqueue", "images"),
  });
  let standin: S | undefined;
  try {
    standin = await o.start(provider);
    await writeFile(envFile, o.envFile(standin), { mode: 0o600 });
    console.log(`${o.name} stand-in: ${o.where(standin)}; env file ${envFile}; sandboxes under ${workRoot}`);
    await new Promise<void>((resolve) => {
      process.once("SIGTERM", resolve);
      process.once("SIGINT", resolve);
    });
    console.log(`${o.name} stand-in stopping: deleting sandboxes`);
    return 0;
  } finally {
    await standin?.stop();
    await provider.close();
    for (const dir of provider.cgroupParentDirs) await rmdir(dir).catch(() => undefined);
    if (standin) await rm(envFile, { force: true });
    if (ownWorkRoot) await rm(workRoot, { recursive: true, force: true });
  }
}
