/**
 * `sandqueue batch FILE.jsonl [--out results.jsonl]`: one job spec per line.
 * Every line is validated first; one bad line means nothing is enqueued.
 * Results are written one per line, in input order, as they arrive.
 */
import { createWriteStream, type WriteStream } from "node:fs";
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { isSandqueueError } from "../errors/index.js";
import type { SandqueueClient } from "../producer/client.js";
import { parseJobSpec } from "../producer/job-spec.js";
import type { JobResult } from "../producer/job-result.js";
import { parseDurationMs, usage } from "./args.js";
import { clientFromEnv } from "./client-from-env.js";
import { formatSummary, summarize, type BatchSummary } from "./latency-summary.js";
import { createProgress } from "./progress.js";

export const BATCH_USAGE = "usage: sandqueue batch FILE.jsonl [--out results.jsonl] [--wait 1h] [--queue NAME]";

/** Parses a JSONL batch; throws one error listing every bad line. */
export function parseBatch(text: string, file: string): unknown[] {
  const specs: unknown[] = [];
  const problems: string[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    try {
      const value: unknown = JSON.parse(line);
      parseJobSpec(value);
      specs.push(value);
    } catch (err) {
      const why = isSandqueueError(err) ? err.message : `not valid JSON (${(err as Error).message})`;
      problems.push(`${file}:${i + 1}: ${why}`);
    }
  });
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
    options: { out: { type: "string" }, wait: { type: "string" }, queue: { type: "string" } },
    allowPositionals: true,
    strict: true,
  });
  const file = positionals[0];
  if (!file || positionals.length > 1) throw usage(BATCH_USAGE);
  const text = await readFile(file, "utf8").catch((err: NodeJS.ErrnoException) => {
    throw usage(`cannot read ${file}: ${err.code ?? err.message}`);
  });
  const specs = parseBatch(text, file);
  const client = clientFromEnv(env, values.queue);
  const out = values.out ? createWriteStream(values.out) : undefined;
  try {
    const { summary } = await runBatch(client, specs, { waitMs: values.wait ? parseDurationMs("wait", values.wait) : 3_600_000, out });
    process.stdout.write(`${formatSummary(summary)}\n`);
    return summary.byStatus.error ? 1 : 0;
  } finally {
    if (out) await new Promise<void>((resolve) => out.end(resolve));
    await client.close();
  }
}
