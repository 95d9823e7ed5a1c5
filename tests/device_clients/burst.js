// A device publishing a burst with MQTT.js, as a user of the platform would:
//   node burst.js PORT TOPIC QOS PROTOCOL_VERSION RETAIN COUNT PER_MESSAGE FIRST_TIMESTAMP_MS
// COUNT readings {"TEMP": i, "timestamp": ISO} with one millisecond between their device
// timestamps, PER_MESSAGE of them per message (1: one object per message; more: a backlog
// array). Prints {"acked": n, "errors": n, "messages": n} once every publish has completed
// or 60 s passed.
"use strict";
const mqtt = require("mqtt");

const [port, topic, qos, version, retain, count, perMessage, first] = process.argv.slice(2);
const readings = Number(count);
const chunk = Number(perMessage);
const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
  protocolVersion: Number(version),
  clientId: `burst-${process.pid}-${Date.now()}`,
  clean: true,
  reconnectPeriod: 0,
});

function reading(i) {
  return { TEMP: i, timestamp: new Date(Number(first) + i).toISOString() };
}

client.on("error", (err) => {
  console.error(`mqtt error: ${err.message}`);
  process.exit(2);
});

client.on("connect", () => {
  let acked = 0;
  let errors = 0;
  let messages = 0;
  for (let start = 0; start < readings; start += chunk) {
    const batch = [];
    for (let i = start; i < Math.min(start + chunk, readings); i++) batch.push(reading(i));
    const payload = JSON.stringify(chunk === 1 ? batch[0] : batch);
    messages++;
    client.publish(topic, payload, { qos: Number(qos), retain: retain === "1" }, (err) => {
      if (err) errors++;
      else acked++;
    });
  }
  const started = Date.now();
  const timer = setInterval(() => {
    if (acked + errors >= messages || Date.now() - started > 60000) {
      clearInterval(timer);
      console.log(JSON.stringify({ acked, errors, messages }));
      client.end(false, () => process.exit(acked === messages ? 0 : 1));
    }
  }, 20);
});
