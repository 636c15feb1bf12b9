/**
 * `npm run bench [-- queue snapshot docker]`: runs the selected benchmarks
 * (all available by default) and prints each one's figures and ratios
 * against a baseline measured in the same run.
 */
import { reportQueueBench, runQueueBench } from "./queue-bench.js";

const BENCHES: Record<string, () => Promise<void>> = {
  queue: async () => console.log(reportQueueBench(await runQueueBench())),
};

const wanted = process.argv.slice(2);
for (const name of wanted.length ? wanted : Object.keys(BENCHES)) {
  const bench = BENCHES[name];
  if (!bench) {
    console.error(`unknown benchmark ${name}; known: ${Object.keys(BENCHES).join(", ")}`);
    process.exit(2);
  }
  await bench();
}
process.exit(0);
