// The @segment/analytics-node side of tally's benchmark: the same workload as bench/throughput.c
// (N track events, 6 mixed properties) sent to the same collector, and one JSON line printed with
// the same figures.
//
//   node bench/node/bench.js --host=http://127.0.0.1:PORT [--n=200000] [--window=1000]
//                            [--flush_interval=1000] [--label=NAME]
//
// Pacing (--window): analytics-node has no bounded queue. Every full batch is POSTed at once, as
// its own concurrent fetch(), and nothing pushes back on the caller; a caller that tracks 200k
// events in a tight loop has 2,000 requests in flight, and batches that time out are retried
// (duplicates) or given up after maxRetries (losses). So the caller here keeps at most `window`
// events outstanding (tracked, but not yet acknowledged by the collector): when it
// reaches the window it awaits the acknowledgements of earlier batches (down to half the window).
// window=0 turns pacing off.
//
// Figures: events/s = N / (time from the first track() until flush() resolves); CPU seconds per
// 100k events from process.cpuUsage() over the same interval; peak RSS from
// process.resourceUsage().maxRSS; track_ns_* = process.hrtime.bigint() around each
// analytics.track() call (the synchronous part the caller pays; waiting for the window is not
// counted, as the C side does not count its retries after a full queue).
'use strict'
const { Analytics } = require('@segment/analytics-node')

const opts = { n: 200000, window: 1000, flush_interval: 1000, label: 'segment', host: '' }
for (const a of process.argv.slice(2)) {
  const m = /^--([a-z_]+)=(.*)$/.exec(a)
  if (!m || !(m[1] in opts)) { console.error(`bad argument ${a}`); process.exit(2) }
  opts[m[1]] = typeof opts[m[1]] === 'number' ? Number(m[2]) : m[2]
}
if (!opts.host) { console.error('--host=http://127.0.0.1:PORT is required'); process.exit(2) }

const pkg = require('@segment/analytics-node/package.json')

async function main () {
  const analytics = new Analytics({
    writeKey: 'bench',
    host: opts.host,
    path: '/v1/batch',
    flushAt: 100,
    maxEventsInBatch: 100,
    flushInterval: opts.flush_interval
  })
  await analytics.ready
  const n = opts.n
  const lat = new Float64Array(n)
  let completed = 0
  let failed = 0
  let waiter = null
  let limit = 0
  const onDone = () => {
    completed++
    if (waiter && completed >= limit) { const w = waiter; waiter = null; w() }
  }
  // Completion is counted from the emitter ('track' once the event's batch was accepted, 'error'
  // when its delivery failed), not from a track() callback: analytics-core holds every callback
  // back until at least 300 ms after the call (getDelay() in its dispatch.js), which would make
  // callback-paced throughput a function of that timer.
  analytics.on('track', onDone)
  analytics.on('error', () => { failed++; onDone() })
  const anonymousId = '0e8f3a4c-6b1d-4c55-9d1e-2f7a7d3c9b10'
  const cpu0 = process.cpuUsage()
  const t0 = process.hrtime.bigint()
  let paced = 0
  for (let k = 0; k < n; k++) {
    const msg = {
      anonymousId,
      event: 'Button Clicked',
      properties: {
        button_name: `Play Again ${k % 97}`,
        level: k % 40,
        score: (k * 7) % 5000 + 0.25,
        hard_mode: k % 3 ? false : true,
        tags: ['arcade', 'weekend'],
        loadout: { weapon: 'bow', ammo: k % 120 }
      }
    }
    const a = process.hrtime.bigint()
    analytics.track(msg)
    lat[k] = Number(process.hrtime.bigint() - a)
    if (opts.window > 0 && k + 1 - completed >= opts.window) {
      // wait until the outstanding count is back to half the window
      limit = k + 1 - opts.window / 2
      paced++
      await new Promise((resolve) => { waiter = resolve })
    }
  }
  const tEnq = process.hrtime.bigint()
  await analytics.flush()
  while (completed < n) await new Promise((resolve) => { limit = n; waiter = resolve })
  const t1 = process.hrtime.bigint()
  const cpu = process.cpuUsage(cpu0)
  lat.sort()
  const s = Number(t1 - t0) / 1e9
  const out = {
    label: opts.label,
    n,
    window: opts.window,
    flush_interval_ms: opts.flush_interval,
    events_per_s: Math.round(n / s),
    enqueue_s: +(Number(tEnq - t0) / 1e9).toFixed(3),
    total_s: +s.toFixed(3),
    cpu_s_per_100k: +(((cpu.user + cpu.system) / 1e6) / n * 100000).toFixed(3),
    peak_rss_mib: +(process.resourceUsage().maxRSS / 1024).toFixed(1),
    track_ns_p50: lat[Math.floor(n / 2)],
    track_ns_p99: lat[Math.floor(n * 99 / 100)],
    track_ns_max: lat[n - 1],
    paced_waits: paced,
    failed,
    node: process.version,
    analytics_node: pkg.version
  }
  await analytics.closeAndFlush({ timeout: 10000 })
  console.log(JSON.stringify(out))
}

main().catch((e) => { console.error(e); process.exit(1) })
