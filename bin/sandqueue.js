#!/usr/bin/env node
// Runs the compiled CLI (npm run build, done by scripts/setup).
import { main } from "../dist/cli/main.js";

main(process.argv.slice(2), process.env).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(err);
    process.exitCode = 70;
  },
);
