/**
 * What every `npm run standin -- NAME --env-file FILE` (kubernetes:
 * `--kubeconfig FILE`) does around its service: its flags (its own plus the
 * ones all stand-ins take), local sandboxes under a work root (a fresh
 * temporary one unless given), the file a worker reads, a line saying where
 * it listens, then run until SIGTERM or SIGINT and undo all of it (the
 * stand-in deletes its sandboxes, the file and our own work root go).
 */
import { mkdtemp, rm, rmdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { parseIntFlag, usage } from "../cli/args.js";
import { LocalProvider } from "../providers/local/index.js";

/** The flags every stand-in takes besides its own. */
const COMMON_OPTIONS = {
  "memory-mb": { type: "string" },
  pids: { type: "string" },
  "work-root": { type: "string" },
  "images-dir": { type: "string" },
  help: { type: "boolean" },
} as const;

/** parseArgs' option declarations (node:util does not export their type by name). */
export type OptionsConfig = NonNullable<ParseArgsConfig["options"]>;

/** A stand-in's command line: its own `options` and the common ones. */
export function parseStandinArgs<const O extends OptionsConfig>(
  args: string[],
  options: O,
): ReturnType<typeof parseArgs<{ args: string[]; options: O & typeof COMMON_OPTIONS }>>["values"] {
  return parseArgs({ args, options: { ...options, ...COMMON_OPTIONS } }).values;
}

/** A port flag: 0 (a free port) when not given. */
export function portFlag(flag: string, value: string | undefined): number {
  return value === undefined ? 0 : parseIntFlag(flag, value, 0, 65535);
}

/** `{[key]: N}` for an integer flag given (checked against min..max); `{}` leaves the stand-in's default. */
export function intOption<K extends string>(key: K, flag: string, value: string | undefined, min: number, max: number): Partial<Record<K, number>> {
  return value ? ({ [key]: parseIntFlag(flag, value, min, max) } as Record<K, number>) : {};
}

/** --memory-mb and --pids as the start options `memoryKey` and `pidsKey`. */
export function sizeOptions<M extends string, P extends string>(
  values: { "memory-mb"?: string; pids?: string },
  memoryKey: M,
  pidsKey: P,
): Partial<Record<M, number>> & Partial<Record<P, number>> {
  return { ...intOption(memoryKey, "memory-mb", values["memory-mb"], 16, 1024 * 1024), ...intOption(pidsKey, "pids", values.pids, 1, 4_000_000) };
}

/** An env file's text: KEY=value lines. */
export function envFileText(vars: Record<string, string>): string {
  return Object.entries(vars)
    .map(([k, v]) => `${k}=${v}\n`)
    .join("");
}

/** The file the stand-in writes for its clients: the flag that names it, what messages call it, how it is written. */
export interface StandinOutput<S> {
  flag: string;
  label: string;
  write(standin: S, file: string): Promise<void>;
}

/** `--env-file FILE`, written with `text` (KEY=value lines), mode 0600. */
export function envFileOutput<S>(text: (standin: S) => string): StandinOutput<S> {
  return { flag: "env-file", label: "env file", write: (standin, file) => writeFile(file, text(standin), { mode: 0o600 }) };
}

export interface ServeStandin<S extends { stop(): Promise<void> }> {
  /** The service's name, as the command and its messages say it. */
  name: string;
  usage: string;
  /** The parsed command line (`parseStandinArgs`). */
  flags: { "work-root"?: string; "images-dir"?: string; help?: boolean } & Record<string, unknown>;
  env: NodeJS.ProcessEnv;
  output: StandinOutput<S>;
  start(provider: LocalProvider): Promise<S>;
  /** Where it listens, for the start-up line. */
  where(standin: S): string;
  /** The start-up line's opening (default "NAME stand-in:"). */
  heading?: string;
  /** What stopping does, for the last line (default "deleting sandboxes"). */
  stopping?: string;
}

export async function serveStandin<S extends { stop(): Promise<void> }>(o: ServeStandin<S>): Promise<number> {
  if (o.flags.help) {
    console.log(o.usage);
    return 0;
  }
  const given = o.flags[o.output.flag];
  if (typeof given !== "string" || !given) throw usage(`--${o.output.flag} FILE is required\n\n${o.usage}`);
  const file = path.resolve(given);
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
    await o.output.write(standin, file);
    console.log(`${o.heading ?? `${o.name} stand-in:`} ${o.where(standin)}; ${o.output.label} ${file}; sandboxes under ${workRoot}`);
    await new Promise<void>((resolve) => {
      process.once("SIGTERM", resolve);
      process.once("SIGINT", resolve);
    });
    console.log(`${o.name} stand-in stopping: ${o.stopping ?? "deleting sandboxes"}`);
    return 0;
  } finally {
    await standin?.stop();
    await provider.close();
    // The parent cgroups, when empty (another stand-in may still use them: rmdir refuses then).
    for (const dir of provider.cgroupParentDirs) await rmdir(dir).catch(() => undefined);
    if (standin) await rm(file, { force: true });
    if (ownWorkRoot) await rm(workRoot, { recursive: true, force: true });
  }
}
