/**
 * Archive targets inside a container: only /workspace and below, and never
 * through a symlink the job planted. The engine resolves paths inside the
 * container's root, so a symlink cannot reach the host; refusing them keeps
 * the contract identical to the local provider's.
 */
import path from "node:path";
import { ErrorCodes, ProviderError, SnapshotError } from "../../errors/index.js";
import { workspaceSegments } from "../local/workspace-path.js";
import { WORKSPACE_DIR } from "../provider.js";
import type { EngineClient } from "./engine-client.js";

interface PathStat {
  mode: number;
  linkTarget: string;
}

// Go's os.FileMode bits, as the engine reports them.
const MODE_DIR = 2 ** 31;
const MODE_SYMLINK = 2 ** 27;

/** Normalised absolute path of `dir` (under /workspace), checked in the container. */
export async function checkedWorkspaceDir(
  engine: EngineClient,
  containerId: string,
  dir: string,
  mkdirp: ((abs: string) => Promise<void>) | null,
): Promise<string> {
  const abs = path.posix.join(WORKSPACE_DIR, ...workspaceSegments(dir));
  let st = await statPath(engine, containerId, abs);
  if (st === null && mkdirp) {
    await mkdirp(abs);
    st = await statPath(engine, containerId, abs);
  }
  if (st === null) throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox path '${dir}' does not exist`);
  // linkTarget is the path with every symlink resolved: any difference means
  // one of the components is a link.
  if ((st.mode & MODE_SYMLINK) !== 0 || st.linkTarget.replace(/\/+$/, "") !== abs) {
    throw new SnapshotError(ErrorCodes.TAR_THROUGH_SYMLINK, `sandbox path '${dir}' goes through a symlink; refused`);
  }
  if (Math.floor(st.mode / MODE_DIR) % 2 !== 1) {
    throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `sandbox path '${dir}' is not a directory`);
  }
  return abs;
}

/** HEAD /containers/{id}/archive: the engine's stat of a path, null when missing. */
async function statPath(engine: EngineClient, containerId: string, abs: string): Promise<PathStat | null> {
  const res = await engine.raw({ method: "HEAD", path: `/containers/${containerId}/archive`, query: { path: abs } });
  res.resume();
  if (res.statusCode === 404) return null;
  const header = res.headers["x-docker-container-path-stat"];
  if ((res.statusCode ?? 500) >= 300 || typeof header !== "string") {
    throw new ProviderError(ErrorCodes.PROVIDER_FAILED, `container engine: stat ${abs}: HTTP ${res.statusCode}`, { retryable: true });
  }
  return JSON.parse(Buffer.from(header, "base64").toString("utf8")) as PathStat;
}
