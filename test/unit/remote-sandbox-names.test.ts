/** Names of sandboxes on remote services: stable per job and attempt, owner recoverable, valid Kubernetes names. */
import { describe, expect, it } from "vitest";
import { ownershipLabels } from "../../providers/provider.js";
import { deadOwnerTags, namesOfDeadOwners, ownerTag, ownerTagOf, sandboxName } from "../../providers/remote/sandbox-names.js";

const spec = (job: string | undefined, attempt?: number) => ({ labels: ownershipLabels("w", job), ...(attempt === undefined ? {} : { attempt }) });

describe("remote sandbox names", () => {
  it("are the same for one job and attempt, different across attempts, jobs and owners", () => {
    const a = sandboxName("sq", "host:1:abc", spec("job-1", 1));
    expect(sandboxName("sq", "host:1:abc", spec("job-1", 1))).toBe(a);
    expect(sandboxName("sq", "host:1:abc", spec("job-1", 2))).not.toBe(a);
    expect(sandboxName("sq", "host:1:abc", spec("job-2", 1))).not.toBe(a);
    expect(sandboxName("sq", "host:2:abc", spec("job-1", 1))).not.toBe(a);
    // Not for a job: a fresh name each time.
    expect(sandboxName("sq", "w", spec(undefined))).not.toBe(sandboxName("sq", "w", spec(undefined)));
  });

  it("fit a Kubernetes Service name (sandbox-<id>-svc) whatever the ids", () => {
    const n = sandboxName("sq", `${"W".repeat(300)}:${"x".repeat(100)}`, spec("J/".repeat(200), 9999));
    expect(`sandbox-${n}-svc`.length).toBeLessThanOrEqual(63);
    expect(n).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
  });

  it("give back their owner's tag, and only for our names", () => {
    const n = sandboxName("sq", "worker-a", spec("job", 3));
    expect(ownerTagOf("sq", n)).toBe(ownerTag("worker-a"));
    expect(ownerTagOf("sq", "m-0123456789ab")).toBeNull();
    expect(ownerTagOf("sq", `x${n}`)).toBeNull();
  });

  it("tell dead owners from live ones through the live workers' labels; nothing without them", async () => {
    const tags = [ownerTag("alive"), ownerTag("dead")];
    const owners = { liveOwners: async () => new Set<string>(), liveOwnerLabels: async () => new Set(["alive"]) };
    expect(await deadOwnerTags(owners, tags)).toEqual(new Set([ownerTag("dead")]));
    expect(await deadOwnerTags({ liveOwners: async () => new Set<string>() }, tags)).toBeNull();
    expect(await deadOwnerTags(undefined, tags)).toBeNull();
  });

  it("pick from a service's list only our names whose owner is dead, never this worker's or foreign ones", async () => {
    const owners = { liveOwners: async () => new Set<string>(), liveOwnerLabels: async () => new Set(["alive", "me"]) };
    const job = (id: string) => ({ labels: { "sandqueue.io/job": id }, attempt: 1 });
    const dead = sandboxName("sq", "dead", job("j1"));
    const names = [sandboxName("sq", "alive", job("j2")), dead, sandboxName("sq", "me", job("j3")), "someone-elses", sandboxName("other", "dead", job("j4"))];
    expect(await namesOfDeadOwners("sq", ownerTag("me"), names, owners)).toEqual([dead]);
    expect(await namesOfDeadOwners("sq", ownerTag("me"), names, undefined)).toEqual([]);
  });
});
