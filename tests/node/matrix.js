// Node.js cluster clients against a real umcluster cluster: the client-matrix scenario for ioredis
// `Cluster` and node-redis `createCluster`. Run by tests/python/test_client_matrix.py:
//
//   node matrix.js <ioredis|node-redis> '<json plan>'
//
// The plan (built by the Python test) names the seed nodes, a slot range that holds no key, and the
// UMCTL SETCLUSTER pushes that hand that range to another node. The scenario writes and reads keys
// across all slots, multi-key commands with a hash tag, a pipeline, a one-slot transaction, a Lua
// script, sharded and classic pub/sub, then pushes the new topology mid-run and writes into the moved range.
// It prints one JSON line {"ok": true, ...} and exits 0, or prints the failure and exits 1.
"use strict";

const assert = require("assert");
const Redis = require("ioredis");
const { createCluster, createClient } = require("redis");
const keySlot = require("cluster-key-slot");

const [clientName, planJson] = process.argv.slice(2);
const plan = JSON.parse(planJson);
const inEmpty = (key) => {
  const s = keySlot(key);
  return s >= plan.empty[0] && s <= plan.empty[1];
};

function withDeadline(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// The few operations the scenario needs, for each client library.
function ioredisClient() {
  const c = new Redis.Cluster(plan.seeds.map(([host, port]) => ({ host, port })), {
    shardedSubscribers: true,
  });
  return {
    set: (k, v) => c.set(k, v),
    get: (k) => c.get(k),
    mset: (obj) => c.mset(obj),
    mget: (keys) => c.mget(keys),
    pipeline: async (ops) => {
      const p = c.pipeline();
      for (const [cmd, ...args] of ops) p[cmd](...args);
      return (await p.exec()).map(([err, v]) => {
        if (err) throw err;
        return v;
      });
    },
    transaction: async (ops) => {
      const m = c.multi();
      for (const [cmd, ...args] of ops) m[cmd](...args);
      return (await m.exec()).map(([err, v]) => {
        if (err) throw err;
        return v;
      });
    },
    eval: (script, keys, args) => c.eval(script, keys.length, ...keys, ...args),
    shardedPubSub: async (channel, message) => {
      const sub = new Redis.Cluster(plan.seeds.map(([host, port]) => ({ host, port })), {
        shardedSubscribers: true,
      });
      const got = new Promise((resolve) =>
        sub.on("smessage", (ch, msg) => ch === channel && resolve(msg)),
      );
      await sub.ssubscribe(channel);
      await c.spublish(channel, message);
      const msg = await withDeadline(got, 5000, "sharded message");
      sub.disconnect();
      return msg;
    },
    classicPubSub: async (channel, message) => {
      const sub = new Redis.Cluster(plan.seeds.map(([host, port]) => ({ host, port })));
      const got = new Promise((resolve) =>
        sub.on("message", (ch, msg) => ch === channel && resolve(msg)),
      );
      await sub.subscribe(channel);
      await c.publish(channel, message);
      const msg = await withDeadline(got, 5000, "classic message");
      sub.disconnect();
      return msg;
    },
    close: () => c.disconnect(),
  };
}

async function nodeRedisClient() {
  const c = createCluster({
    rootNodes: plan.seeds.map(([host, port]) => ({ url: `redis://${host}:${port}` })),
  });
  c.on("error", () => {});
  await c.connect();
  return {
    set: (k, v) => c.set(k, v),
    get: (k) => c.get(k),
    mset: (obj) => c.mSet(obj),
    mget: (keys) => c.mGet(keys),
    pipeline: async (ops) => {
      // node-redis pipelines by routing key: one batch per slot group (same hash tag here).
      const m = c.multi(ops[0][1]);
      for (const [cmd, ...args] of ops) m[cmd](...args);
      return m.execAsPipeline();
    },
    transaction: async (ops) => {
      const m = c.multi(ops[0][1]);
      for (const [cmd, ...args] of ops) m[cmd](...args);
      return m.exec();
    },
    eval: (script, keys, args) => c.eval(script, { keys, arguments: args }),
    shardedPubSub: async (channel, message) => {
      let resolve;
      const got = new Promise((r) => (resolve = r));
      await c.sSubscribe(channel, (msg) => resolve(msg));
      await c.sPublish(channel, message);
      const msg = await withDeadline(got, 5000, "sharded message");
      await c.sUnsubscribe(channel);
      return msg;
    },
    classicPubSub: async (channel, message) => {
      let resolve;
      const got = new Promise((r) => (resolve = r));
      await c.subscribe(channel, (msg) => resolve(msg));
      await c.publish(channel, message);
      const msg = await withDeadline(got, 5000, "classic message");
      await c.unsubscribe(channel);
      return msg;
    },
    close: () => c.close(),
  };
}

// A plain connection to one node, to push topology and to look at where keys live.
async function direct(host, port, fn) {
  const r = new Redis({ host, port, lazyConnect: true, maxRetriesPerRequest: 1 });
  await r.connect();
  try {
    return await fn(r);
  } finally {
    r.disconnect();
  }
}

async function main() {
  const names = { set: "set", get: "get", incr: "incr" };
  const c = clientName === "ioredis" ? ioredisClient() : await nodeRedisClient();
  const up = clientName === "node-redis" ? (s) => s.toUpperCase() : (s) => s;

  // 1. Keys across all slots (but the empty range), read back.
  const keys = [];
  for (let i = 0; keys.length < 2000; i++) {
    const k = `matrix:${clientName}:${i}`;
    if (!inEmpty(k)) keys.push(k);
  }
  await Promise.all(keys.map((k, i) => c.set(k, String(i))));
  const values = await Promise.all(keys.map((k) => c.get(k)));
  values.forEach((v, i) => assert.strictEqual(v, String(i), `value of ${keys[i]}`));

  // 2. Multi-key with a hash tag.
  const tag = `{${clientName}-user}`;
  await c.mset({ [`${tag}a`]: "1", [`${tag}b`]: "2" });
  assert.deepStrictEqual(await c.mget([`${tag}a`, `${tag}b`]), ["1", "2"]);

  // 3. A pipeline (one slot group: ioredis and node-redis both require it).
  const ptag = `{${clientName}-pipe}`;
  const ops = [];
  for (let i = 0; i < 20; i++) ops.push([up(names.set), `${ptag}${i}`, String(i)]);
  for (let i = 0; i < 20; i++) ops.push([up(names.get), `${ptag}${i}`]);
  const piped = await c.pipeline(ops);
  assert.deepStrictEqual(piped.slice(20), [...Array(20).keys()].map(String));

  // 4. A transaction on one slot.
  const t = `{${clientName}-tx}`;
  const tx = await c.transaction([
    [up(names.set), `${t}n`, "41"],
    [up(names.incr), `${t}n`],
  ]);
  assert.deepStrictEqual(tx, ["OK", 42]);

  // 5. A Lua script.
  const script = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
  assert.strictEqual(await c.eval(script, [`${t}lua`], ["5"]), 5);

  // 6. Sharded pub/sub.
  assert.strictEqual(await c.shardedPubSub(`${clientName}-chan`, "hello"), "hello");
  // Classic pub/sub: the client may subscribe and publish on different nodes.
  for (let i = 0; i < 5; i++) {
    assert.strictEqual(await c.classicPubSub(`${clientName}-classic-${i}`, "hi"), "hi");
  }

  // 7. Topology change mid-run: the empty range moves to another node.
  for (const push of plan.pushes) {
    const reply = await direct(push.host, push.port, (r) => r.call("UMCTL", ...push.args));
    assert.strictEqual(reply, "OK", `push to ${push.port}`);
  }
  const moved = [];
  for (let i = 0; moved.length < 20; i++) {
    const k = `moved:${clientName}:${i}`;
    if (inEmpty(k)) moved.push(k);
  }
  for (const k of moved) await c.set(k, "after");
  for (const k of moved) assert.strictEqual(await c.get(k), "after");
  const [host, port] = plan.new_owner;
  const onOwner = await direct(host, port, (r) => Promise.all(moved.map((k) => r.exists(k))));
  assert.ok(onOwner.every((n) => n === 1), "moved keys live on the new owner");
  // Everything written before the move is still readable.
  const again = await Promise.all(keys.slice(0, 200).map((k) => c.get(k)));
  again.forEach((v, i) => assert.strictEqual(v, String(i)));

  await c.close();
  console.log(JSON.stringify({ ok: true, client: clientName, keys: keys.length }));
}

withDeadline(main(), 60000, "scenario")
  .then(() => process.exit(0))
  .catch((e) => {
    console.log(JSON.stringify({ ok: false, client: clientName, error: String(e && e.stack) }));
    process.exit(1);
  });
