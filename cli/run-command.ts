/**
 * `sandqueue run (--shell SCRIPT | --python CODE) [...]`: enqueue one job,
 * wait for it, print the result. Exit status: the job's exit code, 124 when
 * it timed out, 125 when it ended in `error`.
 */
import { parseArgs } from "node:util";
import { DEFAULT_SPEC_SIZE_LIMITS } from "../producer/job-spec.js";
import { exitStatusFor, type JobResult } from "../producer/job-result.js";
import { inlineContent, parseDurationMs, parseIntFlag, parsePairs, readCapped, refuseEmpty, usage } from "./args.js";
import { clientFromEnv, queueFrom } from "./client-from-env.js";

export const RUN_USAGE = `usage: sandqueue run (--shell SCRIPT | --python CODE) [--image I] [--timeout 10s] [--memory MB]
                     [--pids N] [--max-output BYTES] [--env K=V]... [--secret NAME]... [--file PATH=LOCALFILE]...
                     [--from SNAPSHOT] [--persist] [--key IDEMPOTENCY_KEY] [--wait 5m] [--queue NAME] [--json]`;

export async function runCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      shell: { type: "string" },
      python: { type: "string" },
      image: { type: "string" },
      timeout: { type: "string" },
      memory: { type: "string" },
      pids: { type: "string" },
      "max-output": { type: "string" },
      env: { type: "string", multiple: true },
      secret: { type: "string", multiple: true },
      file: { type: "string", multiple: true },
      from: { type: "string" },
      persist: { type: "boolean" },
      key: { type: "string" },
      wait: { type: "string" },
      json: { type: "boolean" },
      queue: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${RUN_USAGE}\n`);
    return 0;
  }
  // Every flag is checked before anything is enqueued: a bad one must not leave a job behind.
  refuseEmpty(values);
  if ((values.shell === undefined) === (values.python === undefined)) throw usage(`exactly one of --shell or --python is required\n${RUN_USAGE}`);
  const limits: Record<string, number> = {};
  if (values.timeout !== undefined) limits.timeoutMs = parseDurationMs("timeout", values.timeout);
  if (values.memory !== undefined) limits.memoryMb = parseIntFlag("memory", values.memory, 1, 1 << 20);
  if (values.pids !== undefined) limits.pids = parseIntFlag("pids", values.pids, 1, 1_000_000);
  if (values["max-output"] !== undefined) limits.maxOutputBytes = parseIntFlag("max-output", values["max-output"], 0, 1 << 30);
  const waitMs = values.wait !== undefined ? parseDurationMs("wait", values.wait) : 10 * 60_000;
  const queue = queueFrom(env, values.queue);
  const envVars = parsePairs("env", values.env);

  // Bytes, not text: binary files travel as base64. Read no more than the inline files limit allows.
  const maxFiles = DEFAULT_SPEC_SIZE_LIMITS.maxFilesBytes;
  const files: Record<string, string | { base64: string }> = {};
  let used = 0;
  for (const [path, local] of Object.entries(parsePairs("file", values.file))) {
    used += Buffer.byteLength(path);
    const bytes = await readCapped("file", `${path}=${local}`, local, Math.max(0, maxFiles - used), maxFiles);
    used += bytes.length;
    files[path] = inlineContent(bytes);
  }

  const spec = {
    ...(values.shell !== undefined ? { kind: "shell", script: values.shell } : { kind: "python", code: values.python }),
    ...(values.image !== undefined ? { image: values.image } : {}),
    env: envVars,
    secrets: values.secret ?? [],
    files,
    limits,
    ...(values.from !== undefined || values.persist
      ? { workspace: { ...(values.from !== undefined ? { from: values.from } : {}), persist: Boolean(values.persist) } }
      : {}),
    ...(values.key !== undefined ? { idempotencyKey: values.key } : {}),
    submittedBy: env.USER ? `cli:${env.USER}` : "cli",
  };

  const client = clientFromEnv(env, queue);
  try {
    const { id } = await client.enqueue(spec);
    const result = await client.waitForResult(id, { timeoutMs: waitMs });
    printResult(result, Boolean(values.json));
    return exitStatusFor(result);
  } finally {
    await client.close();
  }
}

function printResult(result: JobResult, json: boolean): void {
  if (json) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return;
  }
  process.stdout.write(result.stdout);
  process.stderr.write(result.stderr);
  const extra = [
    result.reason ? `reason=${result.reason}` : "",
    result.error ? `error=${result.error.code}: ${result.error.message}` : "",
    result.stdoutTruncated || result.stderrTruncated ? "output truncated" : "",
    result.snapshot ? `snapshot=${result.snapshot.id}` : "",
  ].filter(Boolean);
  process.stderr.write(
    `[sandqueue] job ${result.id} ${result.status} exit=${result.exitCode ?? "-"} ${result.timings.totalMs}ms on ${result.worker}${extra.length ? ` (${extra.join(", ")})` : ""}\n`,
  );
}
