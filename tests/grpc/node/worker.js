// A worker written in Node.js: loads cl-scale's shipped .proto, follows one session's user messages
// (Subscribe) and answers the first one token by token (StreamReply). No Redis, no cl-scale code.
//
//   node worker.js PROTO_DIR HOST:PORT TOKEN SESSION_ID
"use strict";
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [protoDir, target, token, sessionId] = process.argv.slice(2);
const definition = loader.loadSync("clscale/v1/gateway.proto", { includeDirs: [protoDir], keepCase: true });
const { Gateway } = grpc.loadPackageDefinition(definition).clscale.v1;
const client = new Gateway(target, grpc.credentials.createInsecure());
const auth = new grpc.Metadata();
auth.add("authorization", `Bearer ${token}`);

const deadline = () => new Date(Date.now() + 30000);
const subscription = client.Subscribe({ session_ids: [sessionId] }, auth, { deadline: deadline() });
console.log("subscribed");
subscription.on("data", (request) => {
  subscription.cancel();
  const words = `w-node answers: ${request.text}`.split(/(?= )/);
  const id = `node-${request.message_id}`;
  const stream = client.StreamReply(auth, { deadline: deadline() }, (err, result) => {
    if (err) { console.error("StreamReply failed:", err.code, err.details); process.exit(1); }
    console.log(JSON.stringify({ answered: request.message_id, id: result.id, tokens: result.tokens }));
    process.exit(0);
  });
  words.forEach((word, i) => stream.write(i === 0 ? { session_id: request.session_id, id, tokens: [word] }
                                                 : { tokens: [word] }));
  stream.write({ end: true });
  stream.end();
});
subscription.on("error", (err) => {
  if (err.code !== grpc.status.CANCELLED) { console.error("Subscribe failed:", err.code, err.details); process.exit(1); }
});
