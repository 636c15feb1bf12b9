/**
 * The islo provider passes the shared contract suite through the islo
 * stand-in (islo's documented REST API on 127.0.0.1, each sandbox a real
 * local sandbox). Needs bubblewrap and root like the local provider's tests.
 */
import { afterAll } from "vitest";
import { describeProviderContract } from "../../providers/contract.js";
import { startIslo, type IsloHarness } from "../support/islo-harness.js";

let harness: IsloHarness | undefined;
afterAll(async () => {
  await harness?.close();
});

describeProviderContract(
  "islo",
  async () => {
    harness = await startIslo();
    return harness.provider();
  },
  {
    listResources: async () => (harness ? harness.resources() : []),
    slackMs: 2_000,
  },
);
