// The Restate anchor's service for `baton bench` (crates/baton-harness/src/bench/anchors.rs):
// a 3-step pipeline, one durable `ctx.run` per stage (a, b, c), each journaled by the
// server before the next starts. Each step returns a 256-byte result, as an HB3 stage does.
// Serves on 127.0.0.1:$PORT (HTTP/2, cleartext); the bench registers it with the admin API.
// Plain JavaScript (ES modules) over the TypeScript SDK's package, so no compile step.
import * as restate from "@restatedev/restate-sdk";
import http2 from "node:http2";

// SDK 1.17 calls Promise.withResolvers (Node 22); Node 20 lacks it.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

const RESULT = "r".repeat(256);

function step(stage, input) {
  return { stage, bytes: JSON.stringify(input).length, result: RESULT };
}

const pipeline = restate.service({
  name: "Pipeline",
  handlers: {
    run: async (ctx, input) => {
      const a = await ctx.run("a", () => step("a", input));
      const b = await ctx.run("b", () => step("b", a));
      const c = await ctx.run("c", () => step("c", b));
      return { done: c.stage };
    },
  },
});

const port = Number(process.env.PORT);
if (!port) {
  throw new Error("PORT is not set");
}
// Loopback only (restate.serve would listen on every interface).
const server = http2.createServer(restate.createEndpointHandler({ services: [pipeline] }));
server.listen(port, "127.0.0.1", () => console.log(`listening on 127.0.0.1:${port}`));
