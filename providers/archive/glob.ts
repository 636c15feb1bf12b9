/**
 * Exclude patterns for workspace archives.
 *
 * A small matcher instead of node:path `matchesGlob`: on Node 20 that one is
 * experimental (it prints an ExperimentalWarning) and its `**` skips dot
 * files, which is the wrong default for excludes (`**` should cover `.git`).
 *
 * Semantics (documented in docs/SNAPSHOTS.md):
 * - patterns are anchored at the archive root: `build` means the top-level
 *   `build`, `**\/build` means any `build`;
 * - `*` matches any run of characters except `/` (dot files included),
 *   `?` one character except `/`, a whole `**` segment zero or more segments;
 * - a pattern that matches a directory excludes everything below it;
 * - a trailing `/` is ignored, a leading `./` or `/` is stripped.
 */

function escapeRegExp(s: string): string {
  return s.replace(/[.+^${}()|[\]\\]/g, "\\$&");
}

function segmentToRegExp(seg: string): string {
  let out = "";
  for (const ch of seg) {
    if (ch === "*") out += "[^/]*";
    else if (ch === "?") out += "[^/]";
    else out += escapeRegExp(ch);
  }
  return out;
}

/** Compiles one glob to a RegExp source that also matches every path below a match. */
export function globToRegExp(pattern: string): RegExp {
  let p = pattern.trim();
  while (p.startsWith("./")) p = p.slice(2);
  p = p.replace(/^\/+/, "").replace(/\/+$/, "");
  const segs = p.split("/").filter((s) => s !== "" && s !== ".");
  if (segs.length === 0) return /^(?!)/; // matches nothing: "" or "." would exclude the root
  let src = "";
  let needSlash = false;
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i]!;
    if (seg === "**") {
      // zero or more whole segments, each followed by "/" unless it is the last one
      if (i === segs.length - 1) {
        src += needSlash ? "(?:/.*)?" : ".*";
        needSlash = false;
        return new RegExp(`^${src}$`, "s");
      }
      src += needSlash ? "/(?:[^/]+/)*" : "(?:[^/]+/)*";
      needSlash = false;
      continue;
    }
    src += (needSlash ? "/" : "") + segmentToRegExp(seg.replace(/\*\*+/g, "*"));
    needSlash = true;
  }
  return new RegExp(`^${src}(?:/.*)?$`, "s");
}

export type PathMatcher = (relPath: string) => boolean;

/** A predicate for relative posix paths (no leading "./"); null when there is nothing to exclude. */
export function compileExcludes(patterns: readonly string[] | undefined): PathMatcher | null {
  if (!patterns || patterns.length === 0) return null;
  const res = patterns.map(globToRegExp);
  return (relPath) => res.some((re) => re.test(relPath));
}
