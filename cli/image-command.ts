/**
 * `sandqueue image build NAME [--debian SUITE] [--packages p1,p2] [--mirror URL] [--no-engine] [--force]`
 * `sandqueue image ls`
 *
 * Images are Debian root filesystems under $SANDQUEUE_IMAGES_DIR (default
 * .sandqueue/images), imported into the container engine at $DOCKER_HOST
 * under the same name. `--no-engine` builds the rootfs only (local provider).
 */
import path from "node:path";
import { parseArgs } from "node:util";
import { isSandqueueError } from "../errors/index.js";
import { EngineClient } from "../providers/docker/engine-client.js";
import { buildImage, listImages } from "../providers/images/index.js";

type Env = Record<string, string | undefined>;

const USAGE = `usage:
  sandqueue image build NAME [--debian SUITE] [--packages p1,p2] [--mirror URL] [--no-engine] [--force]
  sandqueue image ls [--no-engine]`;

export async function imageCommand(args: string[], env: Env): Promise<number> {
  // `image --help` names no subcommand: the flag stands where the subcommand would.
  const [sub, ...rest] = args[0] === "--help" || args[0] === "-h" ? ["help", ...args.slice(1)] : args;
  let parsed;
  try {
    parsed = parseArgs({
      args: rest,
      allowPositionals: true,
      options: {
        debian: { type: "string" },
        packages: { type: "string" },
        mirror: { type: "string" },
        "no-engine": { type: "boolean", default: false },
        force: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help || sub === undefined || sub === "help") {
    process.stdout.write(`${USAGE}\n`);
    return sub === undefined ? 2 : 0;
  }
  const imagesDir = env.SANDQUEUE_IMAGES_DIR ?? path.resolve(".sandqueue", "images");
  const engine = values["no-engine"] ? null : new EngineClient({ dockerHost: env.DOCKER_HOST });
  try {
    if (sub === "build") {
      const name = positionals[0];
      if (!name || positionals.length > 1) {
        process.stderr.write(`image build takes exactly one NAME\n${USAGE}\n`);
        return 2;
      }
      const packages = values.packages?.split(",").map((p) => p.trim()).filter(Boolean);
      const built = await buildImage(name, {
        imagesDir,
        engine,
        suite: values.debian,
        packages: packages && packages.length ? packages : undefined,
        mirror: values.mirror,
        force: values.force,
        log: (line) => process.stderr.write(`[image] ${line}\n`),
      });
      process.stdout.write(
        `${built.name}: rootfs ${built.rootfs}${built.rootfsBuilt ? " (built)" : " (cached)"}` +
          `${built.imageId ? `, engine image ${built.imageId.replace(/^sha256:/, "").slice(0, 12)}` : ""}\n`,
      );
      return 0;
    }
    if (sub === "ls") {
      const images = await listImages({ imagesDir, engine });
      process.stdout.write(`${"NAME".padEnd(28)} ${"ROOTFS".padEnd(8)} ${"ENGINE".padEnd(14)} ${"SIZE".padStart(9)}  PACKAGES\n`);
      for (const i of images) {
        const size = i.sizeBytes === null ? "-" : `${Math.round(i.sizeBytes / 1024 / 1024)}MB`;
        const id = i.engineId ? i.engineId.replace(/^sha256:/, "").slice(0, 12) : "-";
        process.stdout.write(
          `${i.name.padEnd(28)} ${(i.rootfs ? "yes" : "-").padEnd(8)} ${id.padEnd(14)} ${size.padStart(9)}  ${i.packages.join(",") || "-"}\n`,
        );
      }
      return 0;
    }
    process.stderr.write(`unknown image subcommand "${sub}"\n${USAGE}\n`);
    return 2;
  } catch (err) {
    const code = isSandqueueError(err) ? ` [${err.code}]` : "";
    process.stderr.write(`image ${sub} failed${code}: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  } finally {
    engine?.close();
  }
}
