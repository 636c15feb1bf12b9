/**
 * `sandqueue batch FILE.jsonl [--out results.jsonl]`: one job spec per line.
 * Every line is validated first; one bad line means nothing is enqueued.
 * Results are written one per line, in input order, as they arrive.
 */
import type { WriteStream } from "node:fs";
import { open, readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { isSandqueueError } from "../errors/index.js";
import type { SandqueueClient } from "../producer/client.js";
import { idempotencyConflicts, parseJobSpec, type JobSpec } from "../producer/job-spec.js";
import type { JobResult } from "../producer/job-result.js";
import { parseDurationMs, refuseEmpty, usage } from "./args.js";
import { clientFromEnv, queueFrom } from "./client-from-env.js";
import { formatSummary, summarize, type BatchSummary } from "./latency-summary.js";
import { createProgress } from "./progress.js";

export const BATCH_USAGE = "usage: sandqueue batch FILE.jsonl [--out results.jsonl] [--wait 1h] [--queue NAME]";

/**
 * Parses a JSONL batch; throws one error listing every bad line. Lines that
 * share an idempotencyKey must hold the same spec: one key is one job, so a
 * different spec under it would silently get the first line's result.
 */
export function parseBatch(text: string, file: string): unknown[] {
  const specs: unknown[] = [];
  const parsed: JobSpec[] = [];
  const lines: number[] = [];
  const problems: string[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    try {
      const value: unknown = JSON.parse(line);
      parsed.push(parseJobSpec(value));
      lines.push(i + 1);
      specs.push(value);
    } catch (err) {
      const why = isSandqueueError(err) ? err.message : `not valid JSON (${(err as Error).message})`;
      problems.push(`${file}:${i + 1}: ${why}`);
    }
  });
  for (const c of idempotencyConflicts(parsed)) {
    problems.push(
      `${file}:${lines[c.index]}: idempotencyKey ${JSON.stringify(c.key)} is also used by line ${lines[c.first]} with a different spec ` +
        `(one key is one job: line ${lines[c.index]} would get line ${lines[c.first]}'s result)`,
    );
  }
  if (problems.length) throw usage(`${problems.length} invalid line(s); nothing was enqueued:\n${problems.join("\n")}`);
  if (specs.length === 0) throw usage(`${file}: no job specs found`);
  return specs;
}

export interface BatchRun {
  results: JobResult[];
  summary: BatchSummary;
}

/** Enqueues all specs, waits for every result, reports progress. */
export async function runBatch(
  client: SandqueueClient,
  specs: unknown[],
  opts: { waitMs: number; out?: WriteStream; progress?: boolean },
): Promise<BatchRun> {
  const started = Date.now();
  const ids: string[] = [];
  const CHUNK = 1000;
  for (let i = 0; i < specs.length; i += CHUNK) {
    for (const j of await client.enqueueMany(specs.slice(i, i + CHUNK))) ids.push(j.id);
  }
  const progress = opts.progress === false ? undefined : createProgress(ids.length);
  const results: (JobResult | undefined)[] = new Array<JobResult | undefined>(ids.length);
  let done = 0;
  let written = 0;
  const deadline = Date.now() + opts.waitMs;
  await Promise.all(
    ids.map(async (id, i) => {
      results[i] = await client.waitForResult(id, { timeoutMs: Math.max(1, deadline - Date.now()) });
      done++;
      progress?.update(done);
      // Flush the completed head so the output file stays in input order.
      for (; written < results.length && results[written]; written++) opts.out?.write(`${JSON.stringify(results[written])}\n`);
    }),
  );
  progress?.finish();
  const all = results as JobResult[];
  return { results: all, summary: summarize(all, Date.now() - started) };
}

export async function batchCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { out: { type: "string" }, wait: { type: "string" }, queue: { type: "string" }, help: { type: "boolean", short: "h" } },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${BATCH_USAGE}\n`);
    return 0;
  }
  // Every flag and the whole file are checked before anything is enqueued.
  refuseEmpty(values);
  const file = positionals[0];
  if (!file || positionals.length > 1) throw usage(BATCH_USAGE);
  const waitMs = values.wait !== undefined ? parseDurationMs("wait", values.wait) : 3_600_000;
  const queue = queueFrom(env, values.queue);
  const text = await readFile(file, "utf8").catch((err: NodeJS.ErrnoException) => {
    throw usage(`cannot read ${file}: ${err.code ?? err.message}`);
  });
  const specs = parseBatch(text, file);
  const outFile = values.out;
  const out = outFile
    ? (
        await open(outFile, "w").catch((err: NodeJS.ErrnoException) => {
          throw usage(`--out ${JSON.stringify(outFile)}: cannot be written (${err.code ?? err.message})`);
        })
      ).createWriteStream()
    : undefined;
  const client = clientFromEnv(env, queue);
  try {
    const { summary } = await runBatch(client, specs, { waitMs, out });
    process.stdout.write(`${formatSummary(summary)}\n`);
    return summary.byStatus.error ? 1 : 0;
  } finally {
    if (out) await new Promise<void>((resolve) => out.end(resolve));
    await client.close();
  }
}
