// Two real WebTorrent peers in headless Chromium exchange a buffer
// through aquatic's WebSocket tracker over real WebRTC: one page seeds,
// the other downloads, and the contents' digests are compared.
//
// Usage: node browser.mjs ws://127.0.0.1:PORT
// Needs Debian's chromium (/usr/bin/chromium) and playwright-core.

import { createHash, randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import http from 'node:http'
import { chromium } from 'playwright-core'

const trackerUrl = process.argv[2]
const SIZE = 1024 * 1024 + 4321
const TIMEOUT = 60000

const bundle = readFileSync(new URL('./node_modules/webtorrent/dist/webtorrent.min.js', import.meta.url))
const page = `<!doctype html><meta charset="utf-8"><title>peer</title>
<script type="module">
import WebTorrent from '/webtorrent.min.js'
window.WebTorrent = WebTorrent
window.ready = true
</script>`

const server = http.createServer((req, res) => {
  if (req.url === '/webtorrent.min.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' })
    res.end(bundle)
  } else {
    res.writeHead(200, { 'content-type': 'text/html' })
    res.end(page)
  }
})
await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
const origin = `http://127.0.0.1:${server.address().port}/`

let passed = 0
let failed = 0
function check (name, ok, detail = '') {
  if (ok) { passed++; console.log(`PASS ${name}`) } else { failed++; console.log(`FAIL ${name} ${detail}`) }
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    // Loopback host candidates instead of mDNS names, and no STUN: the
    // peers find each other only through our tracker's offer and answer.
    '--disable-features=WebRtcHideLocalIpsWithMdns',
    '--allow-loopback-in-peer-connection'
  ]
})
const deadline = setTimeout(() => { console.log('FAIL overall timeout'); process.exit(1) }, TIMEOUT + 30000)
try {
  const seederPage = await (await browser.newContext()).newPage()
  const leecherPage = await (await browser.newContext()).newPage()
  for (const p of [seederPage, leecherPage]) {
    p.on('console', m => { if (m.type() === 'error') console.log(`  (page: ${m.text()})`) })
    await p.goto(origin)
    await p.waitForFunction(() => window.ready === true)
  }
  const data = randomBytes(SIZE)
  const expected = createHash('sha256').update(data).digest('hex')
  const magnet = await seederPage.evaluate(async ({ bytes, trackerUrl }) => {
    const client = new window.WebTorrent({ tracker: { rtcConfig: { iceServers: [] } } })
    window.client = client
    const file = new File([new Uint8Array(bytes)], 'payload.bin')
    return await new Promise(resolve => client.seed(file, { announce: [trackerUrl] }, t => resolve(t.magnetURI)))
  }, { bytes: [...data], trackerUrl })
  check('seeder page created the torrent', magnet.startsWith('magnet:'), magnet)

  const digest = await leecherPage.evaluate(async ({ magnet, trackerUrl, timeout }) => {
    const client = new window.WebTorrent({ tracker: { rtcConfig: { iceServers: [] } } })
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('download timed out')), timeout)
      client.add(magnet, { announce: [trackerUrl] }, torrent => {
        torrent.on('done', async () => {
          clearTimeout(timer)
          const buffer = await torrent.files[0].arrayBuffer()
          const hash = await crypto.subtle.digest('SHA-256', buffer)
          resolve([...new Uint8Array(hash)].map(b => b.toString(16).padStart(2, '0')).join(''))
        })
      })
    })
  }, { magnet, trackerUrl, timeout: TIMEOUT })
  check('leecher page downloaded the buffer over WebRTC, digest equal', digest === expected, `${digest} != ${expected}`)
} catch (err) {
  failed++
  console.log(`FAIL ${err.message.split('\n')[0]}`)
} finally {
  clearTimeout(deadline)
  await browser.close()
  server.close()
  console.log(`${passed} passed, ${failed} failed`)
  process.exit(failed === 0 && passed > 0 ? 0 : 1)
}
