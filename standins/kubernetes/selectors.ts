/**
 * Label selectors (`app=x,tier!=db,env in (a,b),!gone,owner`) and field
 * selectors (`metadata.name=x,status.phase!=Failed`) with the grammar and
 * matching rules of k8s.io/apimachinery/pkg/labels and pkg/fields: `!=` and
 * `notin` also match objects without the label. A parse failure is the
 * message of the API's 400 BadRequest.
 */
import { labelKeyProblem, labelValueProblem } from "./validation.js";

type Op = "exists" | "!exists" | "=" | "!=" | "in" | "notin" | ">" | "<";

export interface Requirement {
  key: string;
  op: Op;
  values: string[];
}

export type Selector = Requirement[];

const SPECIAL = new Set([",", "(", ")", "!", "=", "<", ">"]);

/** Splits a selector into identifiers and operator tokens (`!=` and `==` are one token). */
function tokenize(s: string): string[] {
  const tokens: string[] = [];
  let i = 0;
  while (i < s.length) {
    const c = s[i]!;
    if (c === " " || c === "\t") {
      i++;
    } else if ((c === "!" || c === "=") && s[i + 1] === "=") {
      tokens.push(c + "=");
      i += 2;
    } else if (SPECIAL.has(c)) {
      tokens.push(c);
      i++;
    } else {
      let j = i;
      while (j < s.length && !SPECIAL.has(s[j]!) && s[j] !== " " && s[j] !== "\t") j++;
      tokens.push(s.slice(i, j));
      i = j;
    }
  }
  return tokens;
}

const isIdent = (t: string | undefined): t is string => t !== undefined && !SPECIAL.has(t) && t !== "!=" && t !== "==";

export function parseLabelSelector(text: string): Selector | { error: string } {
  const tokens = tokenize(text);
  const reqs: Requirement[] = [];
  let i = 0;
  const fail = (why: string) => ({ error: `unable to parse requirement: ${why}` });
  while (i < tokens.length) {
    let negated = false;
    if (tokens[i] === "!") {
      negated = true;
      i++;
    }
    const key = tokens[i];
    if (!isIdent(key)) return fail(`found '${key ?? ""}', expected: identifier`);
    const keyProblem = labelKeyProblem(key);
    if (keyProblem) return fail(`key: Invalid value: "${key}": ${keyProblem}`);
    i++;
    const next = tokens[i];
    if (negated || next === undefined || next === ",") {
      reqs.push({ key, op: negated ? "!exists" : "exists", values: [] });
      if (negated && next !== undefined && next !== ",") return fail(`found '${next}', expected: ',' or 'end of string'`);
    } else if (next === "=" || next === "==" || next === "!=" || next === ">" || next === "<") {
      i++;
      // An empty value (`key=`) is allowed: it matches the empty label value.
      const value = isIdent(tokens[i]) ? tokens[i++]! : "";
      const problem = next === ">" || next === "<" ? (/^-?\d+$/.test(value) ? null : "must be an integer") : labelValueProblem(value);
      if (problem) return fail(`values[0][${key}]: Invalid value: "${value}": ${problem}`);
      reqs.push({ key, op: next === "==" ? "=" : next, values: [value] });
    } else if (next === "in" || next === "notin") {
      i++;
      if (tokens[i] !== "(") return fail(`found '${tokens[i] ?? ""}', expected: '('`);
      i++;
      const values: string[] = [];
      while (tokens[i] !== ")") {
        const v = isIdent(tokens[i]) ? tokens[i++]! : "";
        const problem = labelValueProblem(v);
        if (problem) return fail(`values[${values.length}][${key}]: Invalid value: "${v}": ${problem}`);
        values.push(v);
        if (tokens[i] === ",") i++;
        else if (tokens[i] !== ")") return fail(`found '${tokens[i] ?? ""}', expected: ',' or ')'`);
      }
      i++;
      if (values.length === 0) return fail(`values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty`);
      reqs.push({ key, op: next, values });
    } else {
      return fail(`found '${next}', expected: in, notin, =, ==, !=, gt, lt`);
    }
    if (i < tokens.length) {
      if (tokens[i] !== ",") return fail(`found '${tokens[i]}', expected: ',' or 'end of string'`);
      i++;
      if (i === tokens.length) return fail("found '', expected: identifier after ','");
    }
  }
  return reqs;
}

export function matchesLabels(selector: Selector, labels: Readonly<Record<string, string>> | undefined): boolean {
  const has = (k: string) => labels !== undefined && Object.prototype.hasOwnProperty.call(labels, k);
  return selector.every(({ key, op, values }) => {
    const v = has(key) ? labels![key]! : undefined;
    switch (op) {
      case "exists":
        return v !== undefined;
      case "!exists":
        return v === undefined;
      case "=":
      case "in":
        return v !== undefined && values.includes(v);
      case "!=":
      case "notin":
        return v === undefined || !values.includes(v);
      case ">":
      case "<": {
        if (v === undefined || !/^-?\d+$/.test(v)) return false;
        return op === ">" ? Number(v) > Number(values[0]) : Number(v) < Number(values[0]);
      }
    }
  });
}

export interface FieldRequirement {
  field: string;
  op: "=" | "!=";
  value: string;
}

/** Splits on unescaped commas; `\,` `\=` `\\` are escapes inside values, as in pkg/fields. */
export function parseFieldSelector(text: string, supported: ReadonlySet<string>): FieldRequirement[] | { error: string } {
  const out: FieldRequirement[] = [];
  if (text.trim() === "") return out;
  const parts: string[] = [];
  let cur = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === "\\" && i + 1 < text.length) {
      cur += c + text[++i];
    } else if (c === ",") {
      parts.push(cur);
      cur = "";
    } else {
      cur += c;
    }
  }
  parts.push(cur);
  for (const part of parts) {
    const m = /^([^=!]+)(==|=|!=)(.*)$/s.exec(part);
    if (!m) return { error: `invalid selector: '${text}'; can't understand '${part}'` };
    const field = m[1]!.trim();
    if (!supported.has(field)) return { error: `field label not supported: ${field}` };
    out.push({ field, op: m[2] === "!=" ? "!=" : "=", value: m[3]!.replace(/\\(.)/g, "$1") });
  }
  return out;
}

export function matchesFields(reqs: readonly FieldRequirement[], valueOf: (field: string) => string): boolean {
  return reqs.every((r) => (valueOf(r.field) === r.value) === (r.op === "="));
}
