// Sends calls with Segment's Node.js library (@segment/analytics-node) to the collector.
// usage: node send_node.js HOST WRITE_KEY COUNT PREFIX  -> prints the messageIds sent, one per line
const { Analytics } = require('@segment/analytics-node')
const [host, writeKey, count, prefix] = process.argv.slice(2)
const analytics = new Analytics({ writeKey, host, maxEventsInBatch: 50, flushInterval: 200 })
const ids = []
analytics.on('error', (err) => { console.error('error', err && err.reason || err); process.exitCode = 1 })
for (let i = 0; i < Number(count); i++) {
  const messageId = `${prefix}-${i}`
  ids.push(messageId)
  analytics.track({ messageId, userId: `node-u${i % 5}`, event: 'Product Viewed',
                    properties: { product_id: `p${i}` } })
}
analytics.identify({ messageId: `${prefix}-identify`, userId: 'node-u1', traits: { plan: 'gold' } })
ids.push(`${prefix}-identify`)
analytics.closeAndFlush({ timeout: 20000 }).then(() => { console.log(ids.join('\n')) })
