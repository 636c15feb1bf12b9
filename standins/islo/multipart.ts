/**
 * multipart/form-data, as islo's file endpoints take it (one part named
 * `file`): enough of RFC 7578 to find that part's bytes in a buffered body.
 */

/** The bytes of the part named `field`, or a message saying why there are none. */
export function multipartField(contentType: string | undefined, body: Buffer, field: string): Buffer | string {
  const m = /^multipart\/form-data\s*;.*boundary=(?:"([^"]+)"|([^\s;]+))/i.exec(contentType ?? "");
  if (!m) return "expected a multipart/form-data body with a boundary";
  const delimiter = Buffer.from(`--${m[1] ?? m[2]}`);
  let at = body.indexOf(delimiter);
  while (at !== -1) {
    const start = at + delimiter.length;
    if (body.subarray(start, start + 2).toString() === "--") break; // the closing delimiter
    const next = body.indexOf(delimiter, start);
    if (next === -1) break;
    // A part: CRLF, headers, CRLF CRLF, content, CRLF before the next delimiter.
    const part = body.subarray(start + 2, next - 2);
    const split = part.indexOf("\r\n\r\n");
    if (split !== -1) {
      const headers = part.subarray(0, split).toString("latin1");
      const name = /content-disposition:[^\r\n]*\bname="([^"]*)"/i.exec(headers)?.[1];
      if (name === field) return part.subarray(split + 4);
    }
    at = next;
  }
  return `expected a form field named "${field}"`;
}
