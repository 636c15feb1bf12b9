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
import { NetworkSchema, boundSecretClashes } from "./network-policy.js";

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

/**
 * Bounds on an inline file's path, so that every host can hold it where the
 * worker writes it (<work root>/<sandbox>/workspace/<path>, under Linux's
 * 4096-byte PATH_MAX): 3072 bytes leave 1024 for the host prefix; 255 bytes
 * is the file name limit of every Linux filesystem; 64 segments is the
 * providers' default archive depth. A unit test keeps these within the
 * archive code's own limits.
 */
export const FILE_PATH_LIMITS = { maxBytes: 3072, maxSegmentBytes: 255, maxDepth: 64 } as const;

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** One rule, one message: no empty, `.` or `..` segment (a path under the images directory must not move). */
const IMAGE_NAME = /^(?!.*\/\/)(?!.*\/$)(?!(?:.*\/)?\.{1,2}(?:\/|$))[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}$/;
const SNAPSHOT_ID = /^sha256:[0-9a-f]{64}$/;
const LABEL_KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;

const GLOB = "expected a glob pattern (a string of 1 to 1024 characters)";
const CALLBACK_URL = "expected an http:// or https:// URL of at most 2048 characters";

function shortText(): z.ZodString {
  const error = "expected a string of 1 to 256 characters";
  return z.string({ error }).min(1, { error }).max(256, { error });
}

function intIn(min: number, max: number, unit = ""): z.ZodNumber {
  const error = `expected an integer from ${min} to ${max}${unit}`;
  return z.number({ error }).int({ error }).min(min, { error }).max(max, { error });
}

/**
 * A workspace-relative path: no absolute paths, no `..`, no empty segments,
 * and short enough for the host (FILE_PATH_LIMITS). `.` segments and a
 * trailing `/` are allowed; canonicalPath says which file a path names.
 */
export function workspacePathProblem(p: string): string | null {
  if (p.length === 0) return "is empty";
  if (p.includes("\0")) return "contains a NUL byte";
  if (p.startsWith("/")) return "is absolute";
  const parts = p.split("/");
  if (parts.some((s) => s === "..")) return "contains '..'";
  if (parts.some((s, i) => s === "" && i !== parts.length - 1)) return "has an empty segment";
  if (parts.every((s) => s === "." || s === "")) return "names the workspace itself";
  const bytes = Buffer.byteLength(p);
  if (bytes > FILE_PATH_LIMITS.maxBytes) return `is ${bytes} bytes long; at most ${FILE_PATH_LIMITS.maxBytes} are accepted`;
  const long = parts.find((s) => Buffer.byteLength(s) > FILE_PATH_LIMITS.maxSegmentBytes);
  if (long !== undefined) {
    return `has a segment of ${Buffer.byteLength(long)} bytes; a file or directory name is at most ${FILE_PATH_LIMITS.maxSegmentBytes} bytes`;
  }
  const depth = canonicalPath(p).split("/").length;
  if (depth > FILE_PATH_LIMITS.maxDepth) return `is ${depth} levels deep; at most ${FILE_PATH_LIMITS.maxDepth} are accepted`;
  return null;
}

/** The file a valid workspace path names: `./a/b/` and `a/b` are the same file. */
export function canonicalPath(p: string): string {
  return p
    .split("/")
    .filter((s) => s !== "" && s !== ".")
    .join("/");
}

const workspacePath = z.string().superRefine((p, ctx) => {
  const problem = workspacePathProblem(p);
  if (problem) ctx.addIssue({ code: "custom", message: `expected a relative path inside the workspace (this one ${problem})` });
});

/**
 * Two keys that name one file (`x`, `./x`), or a file below another file
 * (`a`, `a/b`): the workspace cannot hold both, so the spec says which keys
 * clash instead of the archive code refusing a duplicate later.
 */
function checkFileClashes(files: Record<string, unknown>, ctx: z.RefinementCtx): void {
  const byCanonical = new Map<string, string>();
  for (const key of Object.keys(files)) {
    if (workspacePathProblem(key) !== null) continue;
    const c = canonicalPath(key);
    const first = byCanonical.get(c);
    if (first === undefined) byCanonical.set(c, key);
    else ctx.addIssue({ code: "custom", path: [key], message: `names the same file as files[${showKey(first)}]; give each file once` });
  }
  for (const [c, key] of byCanonical) {
    const parts = c.split("/");
    for (let i = 1; i < parts.length; i++) {
      const parent = byCanonical.get(parts.slice(0, i).join("/"));
      if (parent !== undefined) {
        ctx.addIssue({ code: "custom", path: [key], message: `needs ${showKey(parent)} to be a directory, but files[${showKey(parent)}] is a file` });
        break;
      }
    }
  }
}

const NUL_FREE = { error: "expected text without NUL bytes (a program argument or environment entry cannot hold one)" };
const noNul = (s: string): boolean => !s.includes("\0");

/** Inline file content: text (written as UTF-8), or any bytes as base64. */
const fileContent = z.union(
  [
    z.string(),
    z.strictObject({ base64: z.base64({ error: "expected standard base64 (A-Z a-z 0-9 + /, padded with =)" }) }),
  ],
  { error: 'expected the file content as a string, or {"base64": "..."} for bytes' },
);
export type InlineFileContent = z.infer<typeof fileContent>;

/** The bytes an inline file holds. */
export function fileBytes(content: InlineFileContent): Buffer {
  return typeof content === "string" ? Buffer.from(content, "utf8") : Buffer.from(content.base64, "base64");
}

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
  exclude: z
    .array(z.string({ error: GLOB }).min(1, { error: GLOB }).max(1024, { error: GLOB }), {
      error: "expected an array of glob patterns",
    })
    .max(256, { error: "expected at most 256 patterns" })
    .default([]),
});
export type WorkspaceSpec = z.infer<typeof WorkspaceSchema>;

const common = {
  image: z
    .string({ error: "expected an image name" })
    .regex(IMAGE_NAME, {
      error: "expected an image name: letters, digits and . _ : @ / - (at most 200 characters), without empty, '.' or '..' segments",
    })
    .default("host"),
  env: z
    .record(envName, z.string({ error: "expected a string value" }).refine(noNul, NUL_FREE), {
      error: "expected an object of NAME: value strings",
    })
    .refine((e) => Object.keys(e).length <= 256, { error: "expected at most 256 variables" })
    .default({}),
  secrets: z
    .array(envName, { error: "expected an array of secret names" })
    .max(64, { error: "expected at most 64 secret names" })
    .refine((a) => new Set(a).size === a.length, { error: "expected each secret name once" })
    .default([]),
  files: z
    .record(workspacePath, fileContent, { error: "expected an object of relative path: content" })
    .refine((f) => Object.keys(f).length <= 10_000, { error: "expected at most 10000 files" })
    .superRefine(checkFileClashes)
    .default({}),
  limits: LimitsSchema.default({}),
  /** "none", or an egress policy enforced by the worker's proxy (network-policy.ts). */
  network: NetworkSchema.default("none"),
  labels: z
    .record(
      z.string().regex(LABEL_KEY, { error: "expected a label key: letters, digits and . _ / - (at most 63 characters)" }),
      z.string({ error: "expected a label value of at most 256 characters" }).max(256, { error: "expected a label value of at most 256 characters" }),
      { error: "expected an object of key: value strings" },
    )
    .refine((l) => Object.keys(l).length <= 32, { error: "expected at most 32 labels" })
    .default({}),
  idempotencyKey: shortText().optional(),
  submittedBy: shortText().optional(),
  workspace: WorkspaceSchema.optional(),
  /** Where the HTTP API POSTs the signed result (sandqueue api only; the worker ignores it). */
  callbackUrl: z
    .url({ protocol: /^https?$/, error: CALLBACK_URL })
    .max(2048, { error: CALLBACK_URL })
    .optional(),
};

export const ShellJobSpecSchema = z.strictObject({
  kind: z.literal("shell"),
  script: z.string({ error: "expected the shell script as a string" }).min(1, { error: "expected a non-empty script" }).refine(noNul, NUL_FREE),
  ...common,
});

export const PythonJobSpecSchema = z.strictObject({
  kind: z.literal("python"),
  code: z.string({ error: "expected the python code as a string" }).min(1, { error: "expected non-empty code" }).refine(noNul, NUL_FREE),
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

/** Fields whose keys are the user's data: shown as `env["KEY"]`, `files["a/b"]`. */
const RECORD_FIELDS = ["env", "files", "labels"] as const;

/** A key or path as messages show it: JSON-quoted, shortened when long. */
function showKey(k: string): string {
  const s = JSON.stringify(k);
  return s.length > 80 ? `${s.slice(0, 77)}..."` : s;
}

/** `limits.timeoutMs`, `secrets[1]`, `files["a/b"]`. */
function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  path.forEach((seg, i) => {
    if (typeof seg === "number") out += `[${seg}]`;
    else if (typeof seg === "string" && !(i === 1 && (RECORD_FIELDS as readonly unknown[]).includes(path[0])) && /^[A-Za-z_$][\w$]*$/.test(seg)) {
      out += out ? `.${seg}` : seg;
    } else out += `[${showKey(String(seg))}]`;
  });
  return out || "(spec)";
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The value the user gave at a path (zod reports NaN and Infinity as null). */
function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v = input;
  for (const seg of path) {
    if (typeof v !== "object" || v === null || !Object.hasOwn(v, seg)) return undefined;
    v = (v as Record<PropertyKey, unknown>)[seg];
  }
  return v;
}

function describeInput(v: unknown): string {
  if (v === undefined) return "nothing";
  if (typeof v === "number" && !Number.isFinite(v)) return String(v);
  if (typeof v === "bigint") return `${v}n`;
  if (typeof v === "function" || typeof v === "symbol") return `a ${typeof v}`;
  let s: string | undefined;
  try {
    s = JSON.stringify(v);
  } catch {
    return typeof v; // a cycle, or nesting too deep to print
  }
  if (s === undefined) return typeof v;
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/**
 * Under `network`, a union whose input has one option's type (the policy
 * given as an object, a rule given as an object) reports that option's own
 * issues, with their field paths, instead of one message for the union.
 */
function unwrapUnions(issues: readonly z.core.$ZodIssue[]): z.core.$ZodIssue[] {
  return issues.flatMap((issue) => {
    if (issue.code !== "invalid_union" || issue.path[0] !== "network") return [issue];
    const typed = issue.errors.filter((opt) => !opt.some((i) => i.path.length === 0 && (i.code === "invalid_type" || i.code === "invalid_value")));
    if (typed.length !== 1) return [issue];
    return unwrapUnions(typed[0]!.map((i) => ({ ...i, path: [...issue.path, ...i.path] }) as z.core.$ZodIssue));
  });
}

function formatIssues(error: z.ZodError, input: unknown): SpecIssue[] {
  return unwrapUnions(error.issues).map((issue) => {
    const path = formatPath(issue.path);
    if (issue.code === "unrecognized_keys") return { path, message: `unknown field(s) ${issue.keys.map((k) => `'${k}'`).join(", ")}` };
    // A bad record key: the key's own reason (the record-level text says nothing).
    if (issue.code === "invalid_key") return { path, message: [...new Set(issue.issues.map((i) => i.message))].join("; ") };
    if (issue.code === "custom") return { path, message: issue.message };
    return { path, message: `${issue.message} (got ${describeInput(valueAt(input, issue.path))})` };
  });
}

/** `__proto__` keys: JSON.parse keeps them, but copying into an object drops them unchecked. */
function protoKeyIssues(input: Record<string, unknown>): SpecIssue[] {
  return RECORD_FIELDS.filter((f) => isObject(input[f]) && Object.hasOwn(input[f], "__proto__")).map((f) => ({
    path: formatPath([f, "__proto__"]),
    message: "\"__proto__\" is not accepted as a key",
  }));
}

/** A secret bound to hosts (`network.secrets`) must not also go to the environment (`secrets`). */
function networkIssues(spec: JobSpec): SpecIssue[] {
  return boundSecretClashes(spec.secrets, spec.network).map(({ index, name }) => ({
    path: formatPath(["secrets", index]),
    message: `${name} is bound to hosts in network.secrets, and a bound secret never enters the sandbox: name it in one place only`,
  }));
}

function contentBytes(content: InlineFileContent): number {
  return typeof content === "string" ? Buffer.byteLength(content) : Buffer.byteLength(content.base64, "base64");
}

/** Bytes of the user-supplied payload: the code and inline files (decoded). */
function checkSizes(spec: JobSpec, limits: SpecSizeLimits): SpecIssue[] {
  const issues: SpecIssue[] = [];
  const codeField = spec.kind === "shell" ? "script" : "code";
  const codeBytes = Buffer.byteLength(spec.kind === "shell" ? spec.script : spec.code);
  if (codeBytes > limits.maxCodeBytes) {
    issues.push({ path: codeField, message: `is ${codeBytes} bytes; the limit is ${limits.maxCodeBytes} bytes` });
  }
  let filesBytes = 0;
  for (const [p, content] of Object.entries(spec.files)) filesBytes += Buffer.byteLength(p) + contentBytes(content);
  if (filesBytes > limits.maxFilesBytes) {
    issues.push({ path: "files", message: `total ${filesBytes} bytes; the limit is ${limits.maxFilesBytes} bytes` });
  }
  return issues;
}

function invalid(issues: SpecIssue[]): SpecError {
  return new SpecError(ErrorCodes.SPEC_INVALID, `invalid job spec: ${issues.map((i) => `${i.path}: ${i.message}`).join("; ")}`, {
    details: { issues },
  });
}

/**
 * Validates a job spec. Throws a SpecError whose message names every bad
 * field and what it accepts; `details.issues` carries the same list.
 * Whatever the input holds, the only error is a SpecError: the worker
 * re-validates job data from Redis and must end a bad one at once.
 */
export function parseJobSpec(input: unknown, sizeLimits: SpecSizeLimits = DEFAULT_SPEC_SIZE_LIMITS): JobSpec {
  let spec: JobSpec;
  try {
    if (!isObject(input)) throw invalid([{ path: "(spec)", message: `expected a job spec object with a "kind" field (got ${describeInput(input)})` }]);
    const parsed = JobSpecSchema.safeParse(input, { reportInput: true });
    const issues = [...protoKeyIssues(input), ...(parsed.success ? networkIssues(parsed.data) : formatIssues(parsed.error, input))];
    const unique = [...new Map(issues.map((i) => [`${i.path}\0${i.message}`, i])).values()];
    if (unique.length || !parsed.success) throw invalid(unique);
    spec = parsed.data;
  } catch (err) {
    if (err instanceof SpecError) throw err;
    throw new SpecError(ErrorCodes.SPEC_INVALID, `invalid job spec: it could not be validated (${err instanceof Error ? err.message : String(err)})`, {
      cause: err,
    });
  }
  const sizeIssues = checkSizes(spec, sizeLimits);
  if (sizeIssues.length) {
    throw new SpecError(
      ErrorCodes.SPEC_TOO_LARGE,
      `job spec too large: ${sizeIssues.map((i) => `${i.path} ${i.message}`).join("; ")}`,
      { details: { issues: sizeIssues } },
    );
  }
  return spec;
}

/** JSON with object keys sorted, so equal specs give equal text. */
function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(",")}]`;
  if (isObject(v)) {
    return `{${Object.keys(v)
      .sort()
      .filter((k) => v[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${stableJson(v[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v) ?? "null";
}

/**
 * Specs (by index) that reuse an earlier spec's idempotencyKey with a
 * different spec. One key is one job: only the first would run, and every
 * later one would get its result. Identical specs under one key are fine.
 */
export function idempotencyConflicts(specs: readonly JobSpec[]): { key: string; first: number; index: number }[] {
  const seen = new Map<string, { index: number; json: string }>();
  const conflicts: { key: string; first: number; index: number }[] = [];
  specs.forEach((spec, index) => {
    const key = spec.idempotencyKey;
    if (key === undefined) return;
    const json = stableJson(spec);
    const prev = seen.get(key);
    if (!prev) seen.set(key, { index, json });
    else if (prev.json !== json) conflicts.push({ key, first: prev.index, index });
  });
  return conflicts;
}

/** The command a spec runs, as argv inside the sandbox (cwd = /workspace). */
export function commandFor(spec: JobSpec): string[] {
  return spec.kind === "shell" ? ["/bin/sh", "-c", spec.script] : ["python3", "-c", spec.code];
}
