/**
 * Name, label and metadata rules of the Kubernetes API
 * (k8s.io/apimachinery/pkg/util/validation and api/validation), with its
 * messages, so a 422 from the stand-in reads like one from a cluster.
 */
import type { StatusCause } from "./status.js";

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const QUALIFIED_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

const LABEL_MSG =
  "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG =
  "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const QUALIFIED_MSG =
  "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG =
  "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/** Problems of a DNS-1123 label (container, volume and namespace names), or null. */
export function dns1123LabelProblem(s: string): string | null {
  if (s.length > 63) return "must be no more than 63 characters";
  return DNS1123_LABEL.test(s) ? null : LABEL_MSG;
}

/** Problems of a DNS-1123 subdomain (pod and most object names), or null. */
export function dns1123SubdomainProblem(s: string): string | null {
  if (s.length > 253) return "must be no more than 253 characters";
  return DNS1123_SUBDOMAIN.test(s) ? null : SUBDOMAIN_MSG;
}

/** A label or annotation key: `[prefix/]name`, the prefix a DNS subdomain. */
export function labelKeyProblem(key: string): string | null {
  const parts = key.split("/");
  if (parts.length > 2) return `${QUALIFIED_MSG}; a qualified name must consist of an optional DNS subdomain prefix and a name separated by '/'`;
  const name = parts.at(-1)!;
  if (parts.length === 2) {
    const prefix = parts[0]!;
    if (prefix.length === 0) return "prefix part must be non-empty";
    const p = dns1123SubdomainProblem(prefix);
    if (p) return `prefix part ${p}`;
  }
  if (name.length === 0) return "name part must be non-empty";
  if (name.length > 63) return "name part must be no more than 63 characters";
  return QUALIFIED_NAME.test(name) ? null : QUALIFIED_MSG;
}

export function labelValueProblem(v: string): string | null {
  if (v.length > 63) return "must be no more than 63 characters";
  return LABEL_VALUE.test(v) ? null : LABEL_VALUE_MSG;
}

const quoted = (v: unknown) => JSON.stringify(v);

export const causes = {
  required: (field: string, detail = ""): StatusCause => ({
    reason: "FieldValueRequired",
    message: `Required value${detail ? `: ${detail}` : ""}`,
    field,
  }),
  invalid: (field: string, value: unknown, detail: string): StatusCause => ({
    reason: "FieldValueInvalid",
    message: `Invalid value: ${typeof value === "string" ? quoted(value) : String(value)}: ${detail}`,
    field,
  }),
  duplicate: (field: string, value: unknown): StatusCause => ({
    reason: "FieldValueDuplicate",
    message: `Duplicate value: ${quoted(value)}`,
    field,
  }),
  notFound: (field: string, value: unknown): StatusCause => ({
    reason: "FieldValueNotFound",
    message: `Not found: ${quoted(value)}`,
    field,
  }),
  notSupported: (field: string, value: unknown, supported: readonly string[]): StatusCause => ({
    reason: "FieldValueNotSupported",
    message: `Unsupported value: ${quoted(value)}: supported values: ${supported.map((s) => quoted(s)).join(", ")}`,
    field,
  }),
  forbidden: (field: string, detail: string): StatusCause => ({ reason: "FieldValueForbidden", message: `Forbidden: ${detail}`, field }),
  tooLong: (field: string, max: number): StatusCause => ({
    reason: "FieldValueTooLong",
    message: `Too long: must have at most ${max} bytes`,
    field,
  }),
};

const MAX_ANNOTATIONS_BYTES = 256 * 1024;

export interface MetaRules {
  /** How the object's name is checked: pods and policies are subdomains, namespaces labels. */
  nameProblem: (name: string) => string | null;
}

/**
 * metadata.name / generateName / labels / annotations of an object being
 * created or updated. `name` is the name the object will have (generated
 * names included).
 */
export function validateObjectMeta(meta: Record<string, unknown>, rules: MetaRules): StatusCause[] {
  const out: StatusCause[] = [];
  const name = meta.name;
  const generateName = meta.generateName;
  if ((typeof name !== "string" || name === "") && (typeof generateName !== "string" || generateName === "")) {
    out.push(causes.required("metadata.name", "name or generateName is required"));
  } else if (typeof name === "string" && name !== "") {
    const p = rules.nameProblem(name);
    if (p) out.push(causes.invalid("metadata.name", name, p));
  }
  if (typeof generateName === "string" && generateName !== "") {
    // A prefix may end in '-': the check appends a character as the API does.
    const p = rules.nameProblem(`${generateName.replace(/-+$/, "")}a`);
    if (p) out.push(causes.invalid("metadata.generateName", generateName, p));
  }
  const labels = (meta.labels ?? {}) as Record<string, string>;
  for (const [k, v] of Object.entries(labels)) {
    const kp = labelKeyProblem(k);
    if (kp) out.push(causes.invalid("metadata.labels", k, kp));
    const vp = labelValueProblem(v);
    if (vp) out.push(causes.invalid("metadata.labels", v, vp));
  }
  const annotations = (meta.annotations ?? {}) as Record<string, string>;
  let size = 0;
  for (const [k, v] of Object.entries(annotations)) {
    const kp = labelKeyProblem(k.toLowerCase());
    if (kp) out.push(causes.invalid("metadata.annotations", k, kp));
    size += Buffer.byteLength(k) + Buffer.byteLength(v);
  }
  if (size > MAX_ANNOTATIONS_BYTES) out.push(causes.tooLong("metadata.annotations", MAX_ANNOTATIONS_BYTES));
  return out;
}
