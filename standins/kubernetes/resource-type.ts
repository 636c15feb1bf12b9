/**
 * What the generic request handling (api.ts) needs to know about one kind
 * of object: names for discovery, how a create is checked and defaulted,
 * which updates are allowed, the fields a fieldSelector may name, and the
 * columns of its server-side Table (what `kubectl get` prints).
 */
import type { KubeObject } from "./store.js";
import type { GroupResource, Status } from "./status.js";

export interface TableColumn {
  name: string;
  type: "string" | "integer" | "date";
  format?: string;
  description: string;
  /** 0: always shown; 1: `-o wide` only. */
  priority: number;
}

export interface ResourceType {
  gr: GroupResource;
  version: string;
  kind: string;
  listKind: string;
  singular: string;
  shortNames: string[];
  namespaced: boolean;
  verbs: string[];
  /** Type checks, validation and defaults of a create body; `name` is final (generateName already applied). */
  prepareCreate(body: Record<string, unknown>): KubeObject | Status;
  /** The stored object after a PUT or PATCH, or why the change is refused. `next` already has the server's metadata. */
  prepareUpdate(old: KubeObject, next: Record<string, unknown>): KubeObject | Status;
  /** Fields a fieldSelector may name, beyond metadata.name and metadata.namespace. */
  selectableFields: Record<string, (o: KubeObject) => string>;
  columns: TableColumn[];
  cells(o: KubeObject, now: Date): Array<string | number>;
}

export const apiVersionOf = (t: ResourceType): string => (t.gr.group ? `${t.gr.group}/${t.version}` : t.version);

/** `5s`, `3m20s`, `4h`, `2d`: kubectl's AGE column (k8s.io/apimachinery/pkg/util/duration.HumanDuration). */
export function humanAge(since: string | undefined, now: Date): string {
  if (!since) return "<unknown>";
  const s = Math.floor((now.getTime() - Date.parse(since)) / 1000);
  if (s < 0) return "0s";
  if (s < 120) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 10) return s % 60 === 0 ? `${m}m` : `${m}m${s % 60}s`;
  if (m < 180) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 8) return m % 60 === 0 ? `${h}h` : `${h}h${m % 60}m`;
  if (h < 48) return `${h}h`;
  const d = Math.floor(h / 24);
  if (d < 8) return h % 24 === 0 ? `${d}d` : `${d}d${h % 24}h`;
  if (d < 365 * 2) return `${d}d`;
  return `${Math.floor(d / 365)}y`;
}

export const AGE_COLUMN: TableColumn = {
  name: "Age",
  type: "string",
  description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
  priority: 0,
};

export const NAME_COLUMN: TableColumn = {
  name: "Name",
  type: "string",
  format: "name",
  description: "Name must be unique within a namespace.",
  priority: 0,
};
