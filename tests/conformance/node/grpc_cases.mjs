// grpc-js with @grpc/proto-loader against the mesh's front door, compiling the repo's
// protos as they are (third_party/ has every import): `node grpc_cases.mjs <host:port> <case>`
// prints what the case saw as JSON.
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const [address, name] = process.argv.slice(2);

const definition = protoLoader.loadSync(["infermesh/router/v1/router_service.proto"], {
  includeDirs: [path.join(root, "protos"), path.join(root, "third_party/googleapis"), path.join(root, "third_party/protovalidate")],
  keepCase: true,
  enums: String,
  defaults: false,
  oneofs: true,
});
const infermesh = grpc.loadPackageDefinition(definition).infermesh;
const router = new infermesh.router.v1.RouterService(address, grpc.credentials.createInsecure());
const request = { model: "gemma-3-270m", prompt: "The capital of France is", config: { max_tokens: 8 } };

const cases = {
  services: async () => ({ methods: Object.keys(infermesh.router.v1.RouterService.service).sort() }),
  generate: () =>
    new Promise((resolve, reject) =>
      router.GenerateText(request, (error, reply) => (error ? reject(error) : resolve(reply))),
    ),
  stream: () =>
    new Promise((resolve, reject) => {
      const chunks = [];
      const call = router.StreamGenerateText(request);
      call.on("data", (chunk) => chunks.push(chunk));
      call.on("error", reject);
      call.on("end", () => resolve({ text: chunks.map((c) => c.text).join(""), last: chunks.at(-1) }));
    }),
  bad_request: () =>
    new Promise((resolve) =>
      router.GenerateText({ ...request, config: { ...request.config, temperature: 5 } }, (error) =>
        resolve({ code: error?.code, details: error?.details }),
      ),
    ),
};

console.log(JSON.stringify(await cases[name]()));
router.close();
