/**
 * Progress for long batches: a redrawn bar on a terminal, plain lines
 * (at most one per second) otherwise, so CI logs stay readable.
 */
export interface Progress {
  update(done: number): void;
  finish(): void;
}

export function createProgress(total: number, stream: NodeJS.WriteStream = process.stderr): Progress {
  const tty = Boolean(stream.isTTY);
  const start = Date.now();
  let lastPlain = 0;
  let lastDone = -1;
  const line = (done: number): string => {
    const secs = (Date.now() - start) / 1000;
    const rate = secs > 0 ? (done / secs).toFixed(1) : "0";
    return `${done}/${total} done (${rate}/s)`;
  };
  return {
    update(done) {
      if (done === lastDone) return;
      lastDone = done;
      if (tty) {
        const width = 30;
        const filled = total ? Math.round((done / total) * width) : width;
        stream.write(`\r[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${line(done)}`);
      } else if (Date.now() - lastPlain >= 1000 || done === total) {
        lastPlain = Date.now();
        stream.write(`progress: ${line(done)}\n`);
      }
    },
    finish() {
      if (tty) stream.write("\n");
    },
  };
}
