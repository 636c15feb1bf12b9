/**
 * `sandqueue run (--shell SCRIPT | --python CODE) [...]`: enqueue one job,
 * wait for it, print the result. Exit status: the job's exit code, 124 when
 * it timed out, 125 when it ended in `error`.
 */
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { exitStatusFor, type JobResult } from "../producer/job-result.js";
import { parseDurationMs, parseIntFlag, parsePairs, usage } from "./args.js";
import { clientFromEnv } from "./client-from-env.js";

export const RUN_USAGE = `usage: sandqueue run (--shell SCRIPT | --python CODE) [--image I] [--timeout 10s] [--memory MB]
                     [--pids N] [--max-output BYTES] [--env K=V]... [--secret NAME]... [--file PATH=LOCALFILE]...
                     [--from SNAPSHOT] [--persist] [--key IDEMPOTENCY_KEY] [--wait 5m] [--json]`;

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
    },
    strict: true,
  });
  if ((values.shell === undefined) === (values.python === undefined)) throw usage(`exactly one of --shell or --python is required\n${RUN_USAGE}`);

  const files: Record<string, string> = {};
  for (const [path, local] of Object.entries(parsePairs("file", values.file))) {
    files[path] = await readFile(local, "utf8").catch((err: NodeJS.ErrnoException) => {
      throw usage(`--file ${path}=${local}: cannot read ${local} (${err.code ?? err.message})`);
    });
  }
  const limits: Record<string, number> = {};
  if (values.timeout) limits.timeoutMs = parseDurationMs("timeout", values.timeout);
  if (values.memory) limits.memoryMb = parseIntFlag("memory", values.memory, 1, 1 << 20);
  if (values.pids) limits.pids = parseIntFlag("pids", values.pids, 1, 1_000_000);
  if (values["max-output"]) limits.maxOutputBytes = parseIntFlag("max-output", values["max-output"], 0, 1 << 30);

  const spec = {
    ...(values.shell !== undefined ? { kind: "shell", script: values.shell } : { kind: "python", code: values.python }),
    ...(values.image ? { image: values.image } : {}),
    env: parsePairs("env", values.env),
    secrets: values.secret ?? [],
    files,
    limits,
    ...(values.from || values.persist ? { workspace: { ...(values.from ? { from: values.from } : {}), persist: Boolean(values.persist) } } : {}),
    ...(values.key ? { idempotencyKey: values.key } : {}),
    submittedBy: env.USER ? `cli:${env.USER}` : "cli",
  };

  const client = clientFromEnv(env, values.queue);
  try {
    const { id } = await client.enqueue(spec);
    const waitMs = values.wait ? parseDurationMs("wait", values.wait) : 10 * 60_000;
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
