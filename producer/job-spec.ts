/**
 * The job contract: what a service may enqueue.
 *
 * Shared by the producer (validates before anything is enqueued) and the
 * worker (re-validates what it dequeues: Redis is not a trust boundary we
 * rely on). Unknown keys are rejected so a typo such as `timeout` instead of
 * `limits.timeoutMs` fails loudly instead of being ignored.
 */
import { z } from "zod";
import { ErrorCodes, SpecError } from "../errors/index.js";

/** Absolute bounds of the contract. Workers may configure lower maximums. */
export const LIMIT_BOUNDS = {
  timeoutMs: { min: 1, max: 24 * 3600 * 1000 },
  memoryMb: { min: 8, max: 1024 * 1024 },
  pids: { min: 1, max: 1_000_000 },
  maxOutputBytes: { min: 0, max: 1024 * 1024 * 1024 },
} as const;

/**
 * Default caps on the size of a spec itself (it travels through Redis).
 * The code runs as one argv string (`sh -c`, `python3 -c`), and Linux caps a
 * single argument at 128 KiB (MAX_ARG_STRLEN), hence the code limit; bigger
 * programs belong in `files` or a workspace snapshot.
 */
export const DEFAULT_SPEC_SIZE_LIMITS = {
  maxCodeBytes: 128_000,
  maxFilesBytes: 16 * 1024 * 1024,
} as const;
export type SpecSizeLimits = { maxCodeBytes: number; maxFilesBytes: number };

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const IMAGE_NAME = /^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}$/;
const SNAPSHOT_ID = /^sha256:[0-9a-f]{64}$/;
const LABEL_KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;

function intIn(min: number, max: number, unit = ""): z.ZodNumber {
  const error = `expected an integer from ${min} to ${max}${unit}`;
  return z.number({ error }).int({ error }).min(min, { error }).max(max, { error });
}

/**
 * A workspace-relative path: no absolute paths, no `..`, no empty segments.
 * The same rule guards every path that enters a sandbox workspace.
 */
export function workspacePathProblem(p: string): string | null {
  if (p.length === 0) return "is empty";
  if (p.length > 4096) return "is longer than 4096 characters";
  if (p.includes("\0")) return "contains a NUL byte";
  if (p.startsWith("/")) return "is absolute";
  const parts = p.split("/");
  if (parts.some((s) => s === "..")) return "contains '..'";
  if (parts.some((s, i) => s === "" && i !== parts.length - 1)) return "has an empty segment";
  if (parts.every((s) => s === "." || s === "")) return "names the workspace itself";
  return null;
}

const workspacePath = z.string().superRefine((p, ctx) => {
  const problem = workspacePathProblem(p);
  if (problem) ctx.addIssue({ code: "custom", message: `expected a relative path inside the workspace (this one ${problem})` });
});

const envName = z.string().regex(ENV_NAME, { error: "expected a variable name matching [A-Za-z_][A-Za-z0-9_]*" });

export const LimitsSchema = z.strictObject({
  timeoutMs: intIn(LIMIT_BOUNDS.timeoutMs.min, LIMIT_BOUNDS.timeoutMs.max, " ms").optional(),
  memoryMb: intIn(LIMIT_BOUNDS.memoryMb.min, LIMIT_BOUNDS.memoryMb.max, " MiB").optional(),
  pids: intIn(LIMIT_BOUNDS.pids.min, LIMIT_BOUNDS.pids.max).optional(),
  maxOutputBytes: intIn(LIMIT_BOUNDS.maxOutputBytes.min, LIMIT_BOUNDS.maxOutputBytes.max, " bytes").optional(),
});
export type Limits = z.infer<typeof LimitsSchema>;
export type ResolvedLimits = Required<Limits>;

export const WorkspaceSchema = z.strictObject({
  from: z
    .string()
    .regex(SNAPSHOT_ID, { error: "expected a snapshot id: 'sha256:' followed by 64 lowercase hex digits" })
    .optional(),
  persist: z.boolean({ error: "expected true or false" }).default(false),
  exclude: z.array(z.string().min(1).max(1024), { error: "expected an array of glob patterns" }).max(256).default([]),
});
export type WorkspaceSpec = z.infer<typeof WorkspaceSchema>;

const common = {
  image: z
    .string({ error: "expected an image name" })
    .regex(IMAGE_NAME, { error: "expected an image name: letters, digits and . _ : @ / - (at most 200 characters)" })
    .refine((s) => !s.split("/").includes(".."), { error: "expected an image name without '..' segments" })
    .default("host"),
  env: z
    .record(envName, z.string({ error: "expected a string value" }), { error: "expected an object of NAME: value strings" })
    .refine((e) => Object.keys(e).length <= 256, { error: "expected at most 256 variables" })
    .default({}),
  secrets: z
    .array(envName, { error: "expected an array of secret names" })
    .max(64, { error: "expected at most 64 secret names" })
    .refine((a) => new Set(a).size === a.length, { error: "expected each secret name once" })
    .default([]),
  files: z
    .record(workspacePath, z.string({ error: "expected the file content as a string" }), {
      error: "expected an object of relative path: content",
    })
    .refine((f) => Object.keys(f).length <= 10_000, { error: "expected at most 10000 files" })
    .default({}),
  limits: LimitsSchema.default({}),
  network: z.literal("none", { error: "expected \"none\" (no other network mode is supported yet)" }).default("none"),
  labels: z
    .record(
      z.string().regex(LABEL_KEY, { error: "expected a label key: letters, digits and . _ / - (at most 63 characters)" }),
      z.string().max(256, { error: "expected a label value of at most 256 characters" }),
    )
    .refine((l) => Object.keys(l).length <= 32, { error: "expected at most 32 labels" })
    .default({}),
  idempotencyKey: z.string().min(1, { error: "expected a non-empty string" }).max(256, { error: "expected at most 256 characters" }).optional(),
  submittedBy: z.string().min(1).max(256, { error: "expected at most 256 characters" }).optional(),
  workspace: WorkspaceSchema.optional(),
};

export const ShellJobSpecSchema = z.strictObject({
  kind: z.literal("shell"),
  script: z.string({ error: "expected the shell script as a string" }).min(1, { error: "expected a non-empty script" }),
  ...common,
});

export const PythonJobSpecSchema = z.strictObject({
  kind: z.literal("python"),
  code: z.string({ error: "expected the python code as a string" }).min(1, { error: "expected non-empty code" }),
  ...common,
});

export const JobSpecSchema = z.discriminatedUnion("kind", [ShellJobSpecSchema, PythonJobSpecSchema], {
  error: "expected \"shell\" or \"python\"",
});

/** A spec as a service writes it (defaults optional). */
export type JobSpecInput = z.input<typeof JobSpecSchema>;
/** A validated spec with defaults filled in. */
export type JobSpec = z.output<typeof JobSpecSchema>;
export type JobKind = JobSpec["kind"];

export interface SpecIssue {
  path: string;
  message: string;
}

function describeInput(v: unknown): string {
  if (v === undefined) return "nothing";
  const s = JSON.stringify(v);
  if (s === undefined) return typeof v;
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function formatIssues(error: z.ZodError): SpecIssue[] {
  return error.issues.map((issue) => {
    const path = issue.path.length ? issue.path.map(String).join(".") : "(spec)";
    let message = issue.message;
    if (issue.code === "unrecognized_keys") {
      return { path: path, message: `unknown field(s) ${issue.keys.map((k) => `'${k}'`).join(", ")}` };
    }
    if ("input" in issue && issue.code !== "custom") message += ` (got ${describeInput(issue.input)})`;
    return { path, message };
  });
}

/** Bytes of the user-supplied payload: the code and inline files. */
function checkSizes(spec: JobSpec, limits: SpecSizeLimits): SpecIssue[] {
  const issues: SpecIssue[] = [];
  const codeField = spec.kind === "shell" ? "script" : "code";
  const codeBytes = Buffer.byteLength(spec.kind === "shell" ? spec.script : spec.code);
  if (codeBytes > limits.maxCodeBytes) {
    issues.push({ path: codeField, message: `is ${codeBytes} bytes; the limit is ${limits.maxCodeBytes} bytes` });
  }
  let filesBytes = 0;
  for (const [p, content] of Object.entries(spec.files)) filesBytes += Buffer.byteLength(p) + Buffer.byteLength(content);
  if (filesBytes > limits.maxFilesBytes) {
    issues.push({ path: "files", message: `total ${filesBytes} bytes; the limit is ${limits.maxFilesBytes} bytes` });
  }
  return issues;
}

/**
 * Validates a job spec. Throws a SpecError whose message names every bad
 * field and what it accepts; `details.issues` carries the same list.
 */
export function parseJobSpec(input: unknown, sizeLimits: SpecSizeLimits = DEFAULT_SPEC_SIZE_LIMITS): JobSpec {
  const parsed = JobSpecSchema.safeParse(input, { reportInput: true });
  if (!parsed.success) {
    const issues = formatIssues(parsed.error);
    throw new SpecError(ErrorCodes.SPEC_INVALID, `invalid job spec: ${issues.map((i) => `${i.path}: ${i.message}`).join("; ")}`, {
      details: { issues },
    });
  }
  const sizeIssues = checkSizes(parsed.data, sizeLimits);
  if (sizeIssues.length) {
    throw new SpecError(
      ErrorCodes.SPEC_TOO_LARGE,
      `job spec too large: ${sizeIssues.map((i) => `${i.path} ${i.message}`).join("; ")}`,
      { details: { issues: sizeIssues } },
    );
  }
  return parsed.data;
}

/** The command a spec runs, as argv inside the sandbox (cwd = /workspace). */
export function commandFor(spec: JobSpec): string[] {
  return spec.kind === "shell" ? ["/bin/sh", "-c", spec.script] : ["python3", "-c", spec.code];
}
