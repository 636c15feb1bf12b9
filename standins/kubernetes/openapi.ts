/**
 * /openapi/v2 for `kubectl create -f` validation. kubectl (1.20 and later,
 * client-go's OpenAPISchema) asks for the document as protobuf (gnostic's
 * openapi_v2.Document) and fails the command when it cannot get one, so a
 * 404 is not an option. The document is minimal: one Pod model with its
 * top-level fields, tagged with its group/version/kind, so kubectl checks a
 * pod's top level (an unknown field such as `specs:` is refused) and lets
 * everything below through; other kinds have no model and are not checked.
 */
import { SERVER_VERSION } from "./discovery.js";

function varint(n: number): Buffer {
  const bytes: number[] = [];
  while (n > 0x7f) {
    bytes.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  bytes.push(n);
  return Buffer.from(bytes);
}

/** A length-delimited field (strings and sub-messages, wire type 2). */
function field(tag: number, payload: Buffer | string): Buffer {
  const body = typeof payload === "string" ? Buffer.from(payload) : payload;
  return Buffer.concat([varint((tag << 3) | 2), varint(body.length), body]);
}

const msg = (...fields: Buffer[]) => Buffer.concat(fields);

// Field numbers from gnostic's OpenAPIv2.proto.
const typeItem = (t: string) => field(22, msg(field(1, t))); // Schema.type = TypeItem{value}
const namedSchema = (name: string, schema: Buffer) => msg(field(1, name), field(2, schema));
const properties = (props: Array<[string, Buffer]>) => field(25, msg(...props.map(([n, s]) => field(1, namedSchema(n, s)))));
const extension = (name: string, yaml: string) => field(31, msg(field(1, name), field(2, msg(field(2, yaml)))));

function podModel(): Buffer {
  const str = (d: string) => msg(field(4, d), typeItem("string"));
  const obj = (d: string) => msg(field(4, d), typeItem("object"));
  return msg(
    field(4, "Pod is a collection of containers that can run on a host."),
    typeItem("object"),
    properties([
      ["apiVersion", str("APIVersion defines the versioned schema of this representation of an object.")],
      ["kind", str("Kind is a string value representing the REST resource this object represents.")],
      ["metadata", obj("Standard object's metadata.")],
      ["spec", obj("Specification of the desired behavior of the pod.")],
      ["status", obj("Most recently observed status of the pod.")],
    ]),
    extension("x-kubernetes-group-version-kind", '- group: ""\n  kind: Pod\n  version: v1\n'),
  );
}

let cached: Buffer | null = null;

export function openApiV2(): Buffer {
  cached ??= msg(
    field(1, "2.0"),
    field(2, msg(field(1, "Kubernetes"), field(2, SERVER_VERSION.gitVersion))),
    field(8, Buffer.alloc(0)),
    field(9, msg(field(1, namedSchema("io.k8s.api.core.v1.Pod", podModel())))),
  );
  return cached;
}
