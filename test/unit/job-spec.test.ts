import { describe, expect, it } from "vitest";
import { ErrorCodes, SpecError } from "../../errors/index.js";
import { commandFor, parseJobSpec, workspacePathProblem } from "../../producer/job-spec.js";

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
      files: { "input/data.csv": "a,b\n1,2\n" },
      limits: { timeoutMs: 10000, memoryMb: 256, pids: 128, maxOutputBytes: 1048576 },
      network: "none",
      labels: { team: "x" },
      idempotencyKey: "run-42",
    });
    expect(spec.kind).toBe("shell");
    expect(spec.limits.timeoutMs).toBe(10000);
    const py = parseJobSpec({ kind: "python", code: "print(6*7)" });
    expect(py).toMatchObject({ image: "host", env: {}, secrets: [], files: {}, limits: {}, network: "none", labels: {} });
    expect(commandFor(py)).toEqual(["python3", "-c", "print(6*7)"]);
  });

  it("names every bad field with its path and what it accepts", () => {
    const err = specError({ kind: "shell", script: "", limits: { timeoutMs: 0, memoryMb: "big" }, network: "host", env: { "1BAD": "x" } });
    expect(err.code).toBe(ErrorCodes.SPEC_INVALID);
    const paths = (err.details?.issues as { path: string }[]).map((i) => i.path);
    expect(paths).toEqual(expect.arrayContaining(["script", "limits.timeoutMs", "limits.memoryMb", "network", "env.1BAD"]));
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
      expect(specError({ kind: "shell", script: "x", files: { [p]: "" } }).message).toContain("files.");
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
});
