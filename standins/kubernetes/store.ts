/**
 * The stand-in's etcd: objects by resource/namespace/name, one
 * resourceVersion counter for everything, and a bounded history of changes
 * that watches replay from a resourceVersion (older than the history: 410
 * Expired, as after an etcd compaction).
 */
import { randomUUID } from "node:crypto";

export interface ObjectMeta {
  name: string;
  namespace?: string;
  generateName?: string;
  uid: string;
  resourceVersion: string;
  creationTimestamp: string;
  deletionTimestamp?: string;
  deletionGracePeriodSeconds?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  [key: string]: unknown;
}

export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  [key: string]: unknown;
}

export type EventType = "ADDED" | "MODIFIED" | "DELETED";

export interface StoreEvent {
  type: EventType;
  resource: string;
  rv: number;
  object: KubeObject;
  /** The object before a MODIFIED (watches with selectors turn a change of match into ADDED/DELETED). */
  previous?: KubeObject;
}

/** RFC 3339 at second precision, as metav1.Time marshals. */
export function timestamp(d = new Date()): string {
  return d.toISOString().replace(/\.\d+Z$/, "Z");
}

const clone = <T>(v: T): T => structuredClone(v);

export class ObjectStore {
  private rv = 1000;
  private readonly objects = new Map<string, Map<string, KubeObject>>();
  private readonly history: StoreEvent[] = [];
  /** resourceVersion of the newest event dropped from the history. */
  private compactedThrough = 0;
  private readonly listeners = new Set<(e: StoreEvent) => void>();

  constructor(private readonly historyLimit = 5000) {}

  get resourceVersion(): string {
    return String(this.rv);
  }

  private table(resource: string): Map<string, KubeObject> {
    let t = this.objects.get(resource);
    if (!t) this.objects.set(resource, (t = new Map()));
    return t;
  }

  private static key(namespace: string | undefined, name: string): string {
    return `${namespace ?? ""}/${name}`;
  }

  get(resource: string, namespace: string | undefined, name: string): KubeObject | undefined {
    const o = this.table(resource).get(ObjectStore.key(namespace, name));
    return o && clone(o);
  }

  /** Sorted by namespace, then name (etcd's key order). */
  list(resource: string, namespace?: string): KubeObject[] {
    return [...this.table(resource).entries()]
      .filter(([, o]) => namespace === undefined || o.metadata.namespace === namespace)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, o]) => clone(o));
  }

  /** Stores a new object (the caller checked the name is free); sets uid, resourceVersion and creationTimestamp. */
  create(resource: string, obj: KubeObject): KubeObject {
    const stored = clone(obj);
    stored.metadata.uid = randomUUID();
    stored.metadata.creationTimestamp = timestamp();
    stored.metadata.resourceVersion = String(++this.rv);
    this.table(resource).set(ObjectStore.key(stored.metadata.namespace, stored.metadata.name), stored);
    this.emit({ type: "ADDED", resource, rv: this.rv, object: clone(stored) });
    return clone(stored);
  }

  /** Applies `change` to a copy; `false` from it means "nothing changed" (no new resourceVersion). */
  update(resource: string, namespace: string | undefined, name: string, change: (o: KubeObject) => void | false): KubeObject | undefined {
    const t = this.table(resource);
    const key = ObjectStore.key(namespace, name);
    const current = t.get(key);
    if (!current) return undefined;
    const next = clone(current);
    if (change(next) === false) return clone(current);
    next.metadata.resourceVersion = String(++this.rv);
    t.set(key, next);
    this.emit({ type: "MODIFIED", resource, rv: this.rv, object: clone(next), previous: clone(current) });
    return clone(next);
  }

  remove(resource: string, namespace: string | undefined, name: string): KubeObject | undefined {
    const t = this.table(resource);
    const key = ObjectStore.key(namespace, name);
    const current = t.get(key);
    if (!current) return undefined;
    t.delete(key);
    // The DELETED event carries the object at the deletion's resourceVersion, as the API sends it.
    current.metadata.resourceVersion = String(++this.rv);
    this.emit({ type: "DELETED", resource, rv: this.rv, object: clone(current) });
    return clone(current);
  }

  /** Events after `rv`, or "expired" when the history no longer reaches back that far. */
  eventsSince(rv: number): StoreEvent[] | "expired" {
    if (rv < this.compactedThrough) return "expired";
    return this.history.filter((e) => e.rv > rv).map(clone);
  }

  subscribe(listener: (e: StoreEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(e: StoreEvent): void {
    this.history.push(e);
    while (this.history.length > this.historyLimit) this.compactedThrough = this.history.shift()!.rv;
    for (const l of [...this.listeners]) l(clone(e));
  }
}
