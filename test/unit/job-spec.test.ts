import { describe, expect, it } from "vitest";
import { ErrorCodes, SpecError } from "../../errors/index.js";
import {
  FILE_PATH_LIMITS,
  commandFor,
  fileBytes,
  idempotencyConflicts,
  parseJobSpec,
  workspacePathProblem,
} from "../../producer/job-spec.js";
import { DEFAULT_ARCHIVE_LIMITS, MAX_ARCHIVE_PATH_BYTES, MAX_ARCHIVE_SEGMENT_BYTES } from "../../providers/archive/index.js";

function specError(input: unknown): SpecError {
  try {
    parseJobSpec(input);
  } catch (err) {
    if (err instanceof SpecError) return err;
    throw err;
  }
  throw new Error("expected the spec to be rejected");
}

describe("job spec", () => {
  it("accepts the documented example and fills defaults", () => {
    const spec = parseJobSpec({
      kind: "shell",
      script: "echo hi >out.txt; cat out.txt",
      image: "host",
      env: { K: "V" },
      secrets: ["API_TOKEN"],
      files: { "input/data.csv": "a,b\n1,2\n", "bin/logo.png": { base64: "iVBORw0KGgo=" } },
      limits: { timeoutMs: 10000, memoryMb: 256, pids: 128, maxOutputBytes: 1048576 },
      network: "none",
      labels: { team: "x" },
      idempotencyKey: "run-42",
    });
    expect(spec.kind).toBe("shell");
    expect(spec.limits.timeoutMs).toBe(10000);
    expect(fileBytes(spec.files["bin/logo.png"]!).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))).toBe(true);
    const py = parseJobSpec({ kind: "python", code: "print(6*7)" });
    expect(py).toMatchObject({ image: "host", env: {}, secrets: [], files: {}, limits: {}, network: "none", labels: {} });
    expect(commandFor(py)).toEqual(["python3", "-c", "print(6*7)"]);
  });

  it("names every bad field with its path and what it accepts", () => {
    const err = specError({ kind: "shell", script: "", limits: { timeoutMs: 0, memoryMb: "big" }, network: "host", env: { "1BAD": "x" } });
    expect(err.code).toBe(ErrorCodes.SPEC_INVALID);
    const paths = (err.details?.issues as { path: string }[]).map((i) => i.path);
    expect(paths).toEqual(expect.arrayContaining(["script", "limits.timeoutMs", "limits.memoryMb", "network", 'env["1BAD"]']));
    expect(err.message).toContain("limits.timeoutMs: expected an integer from 1 to 86400000 ms (got 0)");
    expect(err.message).toContain('network: expected "none"');
  });

  it("rejects unknown kinds and unknown fields", () => {
    expect(specError({ kind: "ruby", code: "x" }).message).toContain('kind: expected "shell" or "python"');
    expect(specError({ kind: "shell", script: "x", timeout: 5 }).message).toContain("unknown field(s) 'timeout'");
    expect(specError("not an object").code).toBe(ErrorCodes.SPEC_INVALID);
  });

  it("rejects paths that leave the workspace", () => {
    for (const p of ["/etc/passwd", "../x", "a/../../b", "a//b", "."]) {
      expect(workspacePathProblem(p), p).not.toBeNull();
      expect(specError({ kind: "shell", script: "x", files: { [p]: "" } }).message).toContain(`files[${JSON.stringify(p)}]: expected a relative path`);
    }
    expect(workspacePathProblem("dir/file.txt")).toBeNull();
  });

  it("rejects image names that could escape the images directory", () => {
    expect(specError({ kind: "shell", script: "x", image: "../etc" }).message).toContain("image");
    expect(specError({ kind: "shell", script: "x", image: "a/../../etc" }).message).toContain("image");
  });

  it("rejects oversized code and files with their size and the limit", () => {
    const err = specError({ kind: "python", code: "#".repeat(200_000) });
    expect(err.code).toBe(ErrorCodes.SPEC_TOO_LARGE);
    expect(err.message).toContain("code is 200000 bytes; the limit is 128000 bytes");
    const files = specError({ kind: "shell", script: "x", files: { big: "x".repeat(17 * 1024 * 1024) } });
    expect(files.code).toBe(ErrorCodes.SPEC_TOO_LARGE);
    expect(files.message).toMatch(/files total \d+ bytes; the limit is 16777216 bytes/);
  });

  it("rejects duplicate secret names", () => {
    expect(specError({ kind: "shell", script: "x", secrets: ["A", "A"] }).message).toContain("secrets: expected each secret name once");
  });

  const shell = (extra: Record<string, unknown>) => ({ kind: "shell", script: "true", ...extra });
  const messageOf = (input: unknown): string => specError(input).message;

  it("refuses NUL bytes in code and environment values, naming the field", () => {
    expect(messageOf({ kind: "shell", script: "echo a\0b" })).toBe(
      "invalid job spec: script: expected text without NUL bytes (a program argument or environment entry cannot hold one)",
    );
    expect(messageOf({ kind: "python", code: "print(1)\0" })).toContain("code: expected text without NUL bytes");
    expect(messageOf(shell({ env: { A: "x\0y" } }))).toContain('env["A"]: expected text without NUL bytes');
    expect(messageOf(shell({ env: { "A\0B": "x" } }))).toContain('env["A\\u0000B"]: expected a variable name');
  });

  it("refuses inline file paths the host cannot hold, in bytes, on every level", () => {
    const { maxBytes, maxSegmentBytes, maxDepth } = FILE_PATH_LIMITS;
    const seg = (n: number, c = "d") => c.repeat(n);
    // The longest accepted path, and one byte more.
    const longest = `${Array.from({ length: 12 }, () => seg(254)).join("/")}/${seg(12)}`;
    expect(Buffer.byteLength(longest)).toBe(maxBytes);
    expect(workspacePathProblem(longest)).toBeNull();
    expect(messageOf(shell({ files: { [`${longest}y`]: "" } }))).toContain(
      `is ${maxBytes + 1} bytes long; at most ${maxBytes} are accepted`,
    );
    expect(workspacePathProblem(`a/${seg(maxSegmentBytes)}`)).toBeNull();
    const e = messageOf(shell({ files: { [`a/${seg(maxSegmentBytes + 1)}`]: "" } }));
    expect(e).toContain("files[\"a/dddd");
    expect(e).toContain(`has a segment of 256 bytes; a file or directory name is at most 255 bytes`);
    // Bytes, not characters: 128 two-byte characters are 256 bytes.
    expect(workspacePathProblem(seg(128, "é"))).toContain("segment of 256 bytes");
    expect(workspacePathProblem(Array.from({ length: maxDepth }, () => "a").join("/"))).toBeNull();
    expect(workspacePathProblem(Array.from({ length: maxDepth + 1 }, () => "a").join("/"))).toBe(`is ${maxDepth + 1} levels deep; at most ${maxDepth} are accepted`);
  });

  it("keeps the path limits within what the archive code accepts", () => {
    expect(FILE_PATH_LIMITS.maxBytes).toBeLessThanOrEqual(MAX_ARCHIVE_PATH_BYTES);
    expect(FILE_PATH_LIMITS.maxSegmentBytes).toBeLessThanOrEqual(MAX_ARCHIVE_SEGMENT_BYTES);
    expect(FILE_PATH_LIMITS.maxDepth).toBeLessThanOrEqual(DEFAULT_ARCHIVE_LIMITS.maxDepth);
  });

  it("refuses files keys that name one file twice or put a file below a file", () => {
    expect(messageOf(shell({ files: { x: "1", "./x": "2" } }))).toBe(
      'invalid job spec: files["./x"]: names the same file as files["x"]; give each file once',
    );
    expect(messageOf(shell({ files: { "d/x": "1", "d/./x/": "2" } }))).toContain('files["d/./x/"]: names the same file as files["d/x"]');
    for (const files of [{ a: "1", "a/b": "2" }, { "a/b": "2", a: "1" }, { "./a": "1", "a/b/c": "2" }]) {
      const err = specError(shell({ files }));
      expect(err.code).toBe(ErrorCodes.SPEC_INVALID);
      expect(err.message).toMatch(/files\["a\/b(\/c)?"\]: needs "(\.\/)?a" to be a directory, but files\["(\.\/)?a"\] is a file/);
    }
    expect(parseJobSpec(shell({ files: { "a/b": "1", "a/c": "2", "./d": "3" } })).files).toHaveProperty("./d");
  });

  it("refuses image names with empty, '.' or '..' segments", () => {
    for (const image of ["x/./y", "x//y", "x/", "x/..", "./x", "..", "x/../../y"]) {
      expect(messageOf(shell({ image }))).toBe(
        `invalid job spec: image: expected an image name: letters, digits and . _ : @ / - (at most 200 characters), without empty, '.' or '..' segments (got ${JSON.stringify(image)})`,
      );
    }
    for (const image of ["x/.y", "x/..y", "a.b/c..d:1", "x/y.", "py@sha256:abc"]) expect(parseJobSpec(shell({ image })).image).toBe(image);
    expect(parseJobSpec(shell({ image: "registry.example:5000/team/py@sha256" })).image).toBe("registry.example:5000/team/py@sha256");
  });

  it("refuses __proto__ keys, which JSON.parse keeps but copying drops unchecked", () => {
    for (const field of ["env", "files", "labels"]) {
      const input: unknown = JSON.parse(`{"kind":"shell","script":"true","${field}":{"__proto__":"x"}}`);
      const err = specError(input);
      expect(err.code).toBe(ErrorCodes.SPEC_INVALID);
      expect(err.message).toContain(`${field}["__proto__"]: "__proto__" is not accepted as a key`);
    }
    expect(messageOf(JSON.parse('{"kind":"shell","script":"true","__proto__":{"image":"x"}}'))).toContain("unknown field(s) '__proto__'");
  });

  it("says why a files or env key is bad, not just that the record is", () => {
    expect(messageOf(shell({ files: { "../a": "x" } }))).toBe(
      "invalid job spec: files[\"../a\"]: expected a relative path inside the workspace (this one contains '..')",
    );
    expect(messageOf(shell({ env: { "1A": "x" } }))).toBe('invalid job spec: env["1A"]: expected a variable name matching [A-Za-z_][A-Za-z0-9_]*');
    expect(messageOf(shell({ labels: { "-x": "y" } }))).toContain('labels["-x"]: expected a label key');
  });

  it("shows NaN and Infinity as they are, and each message once", () => {
    const err = specError(shell({ limits: { timeoutMs: NaN, memoryMb: Infinity, pids: -Infinity } }));
    expect(err.message).toContain("limits.timeoutMs: expected an integer from 1 to 86400000 ms (got NaN)");
    expect(err.message).toContain("limits.memoryMb: expected an integer from 8 to 1048576 MiB (got Infinity)");
    expect(err.message).toContain("(got -Infinity)");
    expect(err.message).not.toContain("got null");
    const lines = (err.details?.issues as { path: string; message: string }[]).map((i) => `${i.path}: ${i.message}`);
    expect(new Set(lines).size).toBe(lines.length);
    // A key and its value both bad: two different messages, none repeated.
    const both = specError(shell({ env: { "1A": 5 } })).details?.issues as { path: string; message: string }[];
    const texts = both.map((i) => `${i.path}: ${i.message}`);
    expect(new Set(texts).size).toBe(texts.length);
  });

  it("names a bad kind by its value only, and a spec that is not an object", () => {
    expect(messageOf({ kind: "bash", script: "echo secret-ish" })).toBe('invalid job spec: kind: expected "shell" or "python" (got "bash")');
    expect(messageOf({ script: "x" })).toBe('invalid job spec: kind: expected "shell" or "python" (got nothing)');
    expect(messageOf(null)).toBe('invalid job spec: (spec): expected a job spec object with a "kind" field (got null)');
    expect(messageOf([1])).toContain("expected a job spec object");
  });

  it("throws only SpecErrors, whatever the input holds", () => {
    const hostile = { kind: "shell", script: "x" };
    Object.defineProperty(hostile, "image", { enumerable: true, get: () => { throw new Error("boom"); } });
    expect(specError(hostile)).toMatchObject({ code: ErrorCodes.SPEC_INVALID, message: expect.stringContaining("boom") });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(specError(shell({ files: { a: cyclic } })).message).toContain('files["a"]: expected the file content as a string, or {"base64": "..."} for bytes (got object)');
    expect(specError(shell({ image: { toString: 1 } })).message).toContain('image: expected an image name (got {"toString":1})');
  });

  it("takes file content as text or as base64 bytes, and counts decoded bytes", () => {
    const bytes = Buffer.from([0, 0xff, 0xfe, 0x80, 10]);
    const spec = parseJobSpec(shell({ files: { "bin.dat": { base64: bytes.toString("base64") }, "t.txt": "ü" } }));
    expect(fileBytes(spec.files["bin.dat"]!).equals(bytes)).toBe(true);
    expect(fileBytes(spec.files["t.txt"]!).equals(Buffer.from("ü"))).toBe(true);
    expect(parseJobSpec(shell({ files: { empty: { base64: "" } } })).files.empty).toEqual({ base64: "" });
    expect(messageOf(shell({ files: { a: { base64: "not base64!" } } }))).toContain('files["a"].base64: expected standard base64');
    expect(messageOf(shell({ files: { a: { base64: "AA==", mode: 1 } } }))).toContain(`files["a"]: unknown field(s) 'mode'`);
    expect(messageOf(shell({ files: { a: 5 } }))).toContain('files["a"]: expected the file content as a string, or {"base64": "..."} for bytes (got 5)');
    // 12 MiB of bytes are 16 MiB of base64: the limit is on the bytes.
    const twelve = Buffer.alloc(12 * 1024 * 1024).toString("base64");
    expect(() => parseJobSpec(shell({ files: { big: { base64: twelve } } }))).not.toThrow();
    expect(specError(shell({ files: { a: { base64: twelve }, b: { base64: twelve } } })).code).toBe(ErrorCodes.SPEC_TOO_LARGE);
  });

  it("finds specs that reuse an idempotencyKey with a different spec", () => {
    const a = parseJobSpec(shell({ idempotencyKey: "k", env: { A: "1", B: "2" } }));
    const sameReordered = parseJobSpec(shell({ env: { B: "2", A: "1" }, idempotencyKey: "k" }));
    const other = parseJobSpec(shell({ idempotencyKey: "k", script: "false" }));
    const unkeyed = parseJobSpec(shell({}));
    expect(idempotencyConflicts([a, sameReordered, unkeyed, unkeyed])).toEqual([]);
    expect(idempotencyConflicts([a, unkeyed, sameReordered, other])).toEqual([{ key: "k", first: 0, index: 3 }]);
  });
});
